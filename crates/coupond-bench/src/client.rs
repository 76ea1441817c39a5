use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// One HTTP answer, kept raw so replays can be compared byte for byte.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub replayed: bool,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `error.code` of an error body, if the body is one.
    pub fn error_code(&self) -> Option<String> {
        if self.is_success() {
            return None;
        }
        #[derive(Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
        }
        serde_json::from_slice::<Envelope>(&self.body)
            .ok()
            .map(|e| e.error.code)
    }

    /// `"200"` or `"409 BATCH_LIMIT_REACHED"`: the key answers are tallied under.
    pub fn label(&self) -> String {
        match self.error_code() {
            Some(code) => format!("{} {}", self.status, code),
            None => self.status.to_string(),
        }
    }

    pub fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            s.push('…');
        }
        s
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: Option<HeaderValue>,
}

impl Client {
    pub fn new(
        base_url: &str,
        api_key: Option<&str>,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(pool_size)
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .context("building HTTP client")?;
        let auth = match api_key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}"))
                    .context("API key is not a valid header value")?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Client {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            auth,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends one request; `Err` only for transport failures, any HTTP status is an `Answer`.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        idempotency_key: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Answer, reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path_and_query));
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if let Some(key) = idempotency_key {
            req = req.header(IDEMPOTENCY_KEY, key);
        }
        if let Some(body) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let started = Instant::now();
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let replayed = resp
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.bytes().await?.to_vec();
        Ok(Answer {
            status,
            body,
            replayed,
            retry_after,
            latency: started.elapsed(),
        })
    }

    /// Setup-phase POST: retries while the server reports the key in flight, fails on anything
    /// but the wanted status so a broken setup never turns into misleading numbers.
    pub async fn post_expect(
        &self,
        path: &str,
        key: &str,
        body: &[u8],
        want: StatusCode,
    ) -> Result<Answer> {
        for _ in 0..20 {
            let ans = self
                .send(Method::POST, path, Some(key), Some(body))
                .await
                .with_context(|| format!("POST {path}"))?;
            if ans.status == StatusCode::CONFLICT.as_u16()
                && ans.error_code().as_deref() == Some("REQUEST_IN_PROGRESS")
            {
                let wait = ans.retry_after.unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
                continue;
            }
            if ans.status != want.as_u16() {
                bail!(
                    "POST {path} answered {} (wanted {}): {}",
                    ans.status,
                    want.as_u16(),
                    ans.body_text()
                );
            }
            return Ok(ans);
        }
        bail!("POST {path} stayed REQUEST_IN_PROGRESS")
    }

    /// True once the server answers anything at all on the list endpoint.
    pub async fn is_up(&self) -> bool {
        self.send(Method::GET, "/v1/coupons/", None, None)
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
            replayed: false,
            retry_after: None,
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn labels() {
        assert_eq!(answer(200, r#"{"id":1}"#).label(), "200");
        assert_eq!(
            answer(409, r#"{"error":{"code":"BATCH_LIMIT_REACHED","message":"x"}}"#).label(),
            "409 BATCH_LIMIT_REACHED"
        );
        assert_eq!(answer(502, "bad gateway").label(), "502");
    }
}
