use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// The server answered a setup request with a 5xx: not the bench failing to run but the
/// server breaking the "no 5xx" invariant, so it is reported (and exits) as a failed check.
#[derive(Debug)]
pub struct ServerFault(pub String);

impl std::fmt::Display for ServerFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerFault {}

/// Whether `e` (or anything it wraps) is a `ServerFault`.
pub fn is_server_fault(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<ServerFault>().is_some())
}

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
    /// One server, or several that share a database: requests go to them in turn.
    bases: Arc<[String]>,
    next: Arc<AtomicUsize>,
    auth: Option<HeaderValue>,
    /// Setup requests retried after a 503, over the client's life.
    setup_retries: Arc<AtomicU64>,
}

/// How many 503s in a row one setup request may see before the setup fails.
const SETUP_UNAVAILABLE_RETRIES: u32 = 10;

impl Client {
    pub fn new(
        base_url: &str,
        api_key: Option<&str>,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Self> {
        Client::round_robin(&[base_url.to_string()], api_key, pool_size, timeout)
    }

    /// A client that sends each request to the next of `base_urls` (round-robin), as a load
    /// balancer in front of several coupond processes on one database would.
    pub fn round_robin(
        base_urls: &[String],
        api_key: Option<&str>,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Self> {
        if base_urls.is_empty() {
            bail!("no server to send requests to");
        }
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
            bases: base_urls
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            next: Arc::new(AtomicUsize::new(0)),
            auth,
            setup_retries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Setup requests retried after a 503 so far; the difference around a run is that
    /// run's.
    pub fn setup_retries(&self) -> u64 {
        self.setup_retries.load(Ordering::Relaxed)
    }

    /// The servers this client sends to, in round-robin order.
    pub fn base_urls(&self) -> &[String] {
        &self.bases
    }

    fn next_base(&self) -> &str {
        let n = if self.bases.len() == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len()
        };
        &self.bases[n]
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
            .request(method, format!("{}{}", self.next_base(), path_and_query));
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
        let mut unavailable = 0;
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
            // 503 says nothing was stored and the request may be retried: what a client
            // does with an idempotency key. Setup is unmeasured, so it retries (a few
            // times) instead of throwing away a prefill of a million coupons over one
            // moment of load shedding; measured requests never retry.
            if ans.status == StatusCode::SERVICE_UNAVAILABLE.as_u16()
                && unavailable < SETUP_UNAVAILABLE_RETRIES
            {
                unavailable += 1;
                self.setup_retries.fetch_add(1, Ordering::Relaxed);
                let wait = ans.retry_after.unwrap_or(Duration::from_millis(250));
                tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
                continue;
            }
            if ans.status >= 500 {
                return Err(anyhow::Error::new(ServerFault(format!(
                    "POST {path} (Idempotency-Key {key}) answered {}: {}",
                    ans.status,
                    ans.body_text()
                ))));
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

    /// True once `GET /healthz` answers 200.
    pub async fn is_up(&self) -> bool {
        self.send(Method::GET, "/healthz", None, None)
            .await
            .is_ok_and(|a| a.status == 200)
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
            answer(
                409,
                r#"{"error":{"code":"BATCH_LIMIT_REACHED","message":"x"}}"#
            )
            .label(),
            "409 BATCH_LIMIT_REACHED"
        );
        assert_eq!(answer(502, "bad gateway").label(), "502");
        // A 2xx body is never read as an error, even if it looks like one.
        assert_eq!(answer(200, r#"{"error":{"code":"X"}}"#).label(), "200");
        assert_eq!(answer(404, r#"{"error":{}}"#).label(), "404");
    }

    #[test]
    fn server_faults_are_recognised_through_context() {
        let e = anyhow::Error::new(ServerFault("500".into())).context("creating the batch");
        assert!(is_server_fault(&e));
        assert!(!is_server_fault(&anyhow::anyhow!("connection refused")));
    }

    fn test_client(base: &str, key: Option<&str>) -> Client {
        match Client::new(base, key, 1, Duration::from_secs(5)) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// A one-shot HTTP server on loopback: returns what the client sent.
    async fn one_exchange(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let (base, task) = exchanges(vec![response]).await;
        let task = tokio::spawn(async move {
            task.await
                .ok()
                .and_then(|mut all| all.pop())
                .unwrap_or_default()
        });
        (base, task)
    }

    /// An HTTP server on loopback that answers one connection per response, in order
    /// (each response closes its connection); returns the requests it read.
    async fn exchanges(
        responses: Vec<&'static str>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("addr: {e}"),
        };
        let task = tokio::spawn(async move {
            let mut requests = Vec::new();
            for response in responses {
                let Ok((mut sock, _)) = listener.accept().await else {
                    break;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
                requests.push(String::from_utf8_lossy(&buf).to_string());
            }
            requests
        });
        (format!("http://{addr}"), task)
    }

    const UNAVAILABLE: &str =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 0\r\ncontent-length: 46\r\nconnection: close\r\n\r\n\
         {\"error\":{\"code\":\"UNAVAILABLE\",\"message\":\"x\"}}";

    #[tokio::test]
    async fn setup_retries_a_503_with_the_same_key() {
        let (base, server) = exchanges(vec![
            UNAVAILABLE,
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
             content-length: 8\r\nconnection: close\r\n\r\n{\"id\":7}",
        ])
        .await;
        let client = test_client(&base, None);
        let r = client
            .post_expect("/v1/coupon-batches/", "k-1", b"{}", StatusCode::CREATED)
            .await;
        assert!(r.is_ok(), "{:?}", r.err());
        assert_eq!(client.setup_retries(), 1);
        let requests = server.await.unwrap_or_default();
        assert_eq!(requests.len(), 2);
        for r in requests {
            assert!(
                r.to_ascii_lowercase().contains("idempotency-key: k-1\r\n"),
                "{r}"
            );
        }
    }

    #[tokio::test]
    async fn setup_gives_up_after_repeated_503s() {
        let answers = vec![UNAVAILABLE; SETUP_UNAVAILABLE_RETRIES as usize + 1];
        let (base, _server) = exchanges(answers).await;
        let client = test_client(&base, None);
        let r = client
            .post_expect("/v1/coupon-batches/", "k", b"{}", StatusCode::CREATED)
            .await;
        assert!(r.as_ref().is_err_and(is_server_fault), "{:?}", r.err());
        assert_eq!(client.setup_retries(), u64::from(SETUP_UNAVAILABLE_RETRIES));
    }

    #[tokio::test]
    async fn sends_auth_key_and_json_and_reads_replay_headers() {
        let body = r#"{"code":"ABC","status":"issued"}"#;
        let (base, server) = one_exchange(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nidempotent-replayed: true\r\n\
             retry-after: 2\r\ncontent-length: 32\r\nconnection: close\r\n\r\n{\"code\":\"ABC\",\"status\":\"issued\"}",
        )
        .await;
        let client = test_client(&base, Some("k-123"));
        let ans = client
            .send(
                Method::POST,
                "/v1/coupons/issue/",
                Some("key-1"),
                Some(br#"{"batch_id":1,"user_id":"u"}"#),
            )
            .await;
        let ans = match ans {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(ans.status, 200);
        assert!(ans.replayed);
        assert_eq!(ans.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(ans.body, body.as_bytes());
        let request = server.await.unwrap_or_default().to_ascii_lowercase();
        assert!(
            request.starts_with("post /v1/coupons/issue/ http/1.1"),
            "{request}"
        );
        assert!(
            request.contains("authorization: bearer k-123\r\n"),
            "{request}"
        );
        assert!(request.contains("idempotency-key: key-1\r\n"), "{request}");
        assert!(
            request.contains("content-type: application/json\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with(r#"{"batch_id":1,"user_id":"u"}"#),
            "{request}"
        );
    }

    #[tokio::test]
    async fn setup_5xx_is_a_server_fault() {
        let (base, _server) = one_exchange(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
             content-length: 43\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"INTERNAL\",\"message\":\"x\"}}",
        )
        .await;
        let client = test_client(&base, None);
        let r = client
            .post_expect("/v1/coupon-batches/", "k", b"{}", StatusCode::CREATED)
            .await;
        assert!(r.as_ref().is_err_and(is_server_fault), "{:?}", r.err());
    }

    #[test]
    fn api_key_must_be_a_header_value() {
        let c = Client::new("http://127.0.0.1:1/", Some("k"), 1, Duration::from_secs(1));
        assert!(c.is_ok_and(|c| c.base_urls() == ["http://127.0.0.1:1"]));
        assert!(Client::new("http://x", Some("bad\nkey"), 1, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn round_robin_takes_turns() {
        let bases = ["http://a:1/".to_string(), "http://b:2".to_string()];
        let c = match Client::round_robin(&bases, None, 1, Duration::from_secs(1)) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let order: Vec<&str> = (0..5).map(|_| c.next_base()).collect();
        assert_eq!(
            order,
            [
                "http://a:1",
                "http://b:2",
                "http://a:1",
                "http://b:2",
                "http://a:1"
            ]
        );
        assert!(Client::round_robin(&[], None, 1, Duration::from_secs(1)).is_err());
    }
}
