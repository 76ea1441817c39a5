//! The console over plain HTTP, as a browser speaks it: forms, cookies, redirects not
//! followed (so that each answer can be looked at).

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// One answer of the console.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Where a redirect points.
    pub fn location(&self) -> &str {
        self.header("location").unwrap_or("")
    }

    /// The values of every `Set-Cookie`.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    /// The value a cookie is set to by this answer.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies().into_iter().find_map(|c| {
            let first = c.split(';').next()?.trim().to_owned();
            let (k, v) = first.split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    }

    /// The `value` of the first `<input name="NAME" …>`.
    pub fn input(&self, name: &str) -> Option<String> {
        input_value(&self.body, name)
    }
}

pub fn input_value(html: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\" value=\"");
    let start = html.find(&needle)? + needle.len();
    let end = html[start..].find('"')? + start;
    Some(html_unescape(&html[start..end]))
}

/// Text as it reads, from the way a page escapes it.
pub fn html_unescape(s: &str) -> String {
    s.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#60;", "<")
        .replace("&lt;", "<")
        .replace("&#62;", ">")
        .replace("&gt;", ">")
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

/// A browser-like client of one server: one cookie jar of one cookie, the session.
#[derive(Clone)]
pub struct Console {
    pub http: reqwest::Client,
    pub base: String,
    pub session: Option<String>,
}

impl Console {
    pub fn new(base: &str) -> Console {
        Console {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("building the HTTP client"),
            base: base.to_owned(),
            session: None,
        }
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> Page {
        let response = builder.send().await.expect("sending the request");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.expect("reading the body");
        Page {
            status,
            headers,
            body,
        }
    }

    fn with_session(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.session {
            Some(token) => builder.header("cookie", format!("coupond_admin={token}")),
            None => builder,
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        self.send(self.with_session(self.http.get(format!("{}{path}", self.base))))
            .await
    }

    /// A form sent from one of the console's own pages (same origin).
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_with(path, fields, &[("origin", &self.base)])
            .await
    }

    pub async fn post_with(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let body = serde_urlencoded::to_string(fields).expect("encoding the form");
        let mut builder = self
            .with_session(self.http.post(format!("{}{path}", self.base)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        self.send(builder).await
    }

    /// The sign-in form's answer for `key`, sent with the form's own token and cookie.
    pub async fn try_sign_in(&self, key: &str) -> Page {
        let form = self.get("/admin/login").await;
        assert_eq!(form.status, 200, "the sign-in page: {form:?}");
        let token = form.input("login_token").expect("the sign-in form's token");
        let cookie = form
            .cookie("coupond_admin_login")
            .expect("the sign-in form's cookie");
        self.post_with(
            "/admin/login",
            &[("login_token", &token), ("next", "/admin/"), ("key", key)],
            &[
                ("origin", &self.base),
                ("cookie", &format!("coupond_admin_login={cookie}")),
            ],
        )
        .await
    }

    /// Signs in with `key`, which must work.
    pub async fn sign_in(base: &str, key: &str) -> Console {
        let mut console = Console::new(base);
        let answer = console.try_sign_in(key).await;
        assert_eq!(answer.status, 303, "signing in: {answer:?}");
        console.session = Some(answer.cookie("coupond_admin").expect("a session cookie"));
        console
    }
}
