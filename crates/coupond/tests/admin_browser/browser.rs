//! A real headless Chromium, driven over WebDriver (chromedriver on a free port, one
//! per test, with a fresh profile). Missing Chromium is a failure, never a skip:
//! `apt-get install -y chromium chromium-driver` (Debian's packages) provides both.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a page or an element may take to appear.
pub const WAIT: Duration = Duration::from_secs(15);

pub const DESKTOP: (u32, u32) = (1280, 900);
pub const PHONE: (u32, u32) = (390, 844);

/// A browser session against one coupond server.
pub struct Browser {
    pub client: Client,
    pub base: String,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: the admin console's browser tests need Debian's Chromium and its \
         driver (`apt-get install -y chromium chromium-driver`)"
    );
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at desktop size; screenshots go to
    /// `shots`.
    pub async fn start(base: &str, shots: PathBuf) -> Browser {
        require(CHROMIUM);
        require(CHROMEDRIVER);
        std::fs::create_dir_all(&shots).expect("creating the screenshot folder");
        let profile = tempfile::Builder::new()
            .prefix("coupond-chromium-")
            .tempdir()
            .expect("a temporary profile folder");
        let port = crate::helpers::free_port();
        // A process group of its own: dropping the browser ends chromedriver and the
        // Chromium it started, even when a test fails half-way.
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": args}),
        );
        let mut client = None;
        let mut last_error = String::new();
        while client.is_none() && Instant::now() < deadline {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&webdriver)
                .await
            {
                Ok(c) => client = Some(c),
                Err(e) => {
                    last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let client =
            client.unwrap_or_else(|| panic!("no WebDriver session with {CHROMIUM}: {last_error}"));
        let browser = Browser {
            client,
            base: base.to_owned(),
            driver,
            _profile: profile,
            shots,
        };
        browser.resize(DESKTOP).await;
        browser
    }

    pub async fn resize(&self, (width, height): (u32, u32)) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("resizing the window");
    }

    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("opening {path}: {e}"));
    }

    /// The path (and query) the browser is at.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("the current URL");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits for an element to be there.
    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("looking for {css}: {e}"))
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Clears a field and types into it.
    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clearing {css}: {e}"));
        field
            .send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    /// Sets a field's value directly (date pickers do not take typing the same way in
    /// every locale).
    pub async fn set_value(&self, css: &str, value: &str) {
        self.find(css).await;
        self.js(
            "document.querySelector(arguments[0]).value = arguments[1];",
            vec![json!(css), json!(value)],
        )
        .await;
    }

    pub async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("choosing {value} in {css}: {e}"));
    }

    pub async fn value(&self, css: &str) -> String {
        self.find(css)
            .await
            .prop("value")
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("running a script: {e}"))
    }

    pub async fn js_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute_async(script, args)
            .await
            .unwrap_or_else(|e| panic!("running a script: {e}"))
    }

    /// Waits until `check` holds, polling.
    pub async fn until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while !check().await {
            assert!(Instant::now() < deadline, "waited in vain for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the page at `path` (its path, any query) to have loaded.
    pub async fn at(&self, path: &str) {
        let wanted = path.to_owned();
        let deadline = Instant::now() + WAIT;
        loop {
            let here = self.path().await;
            let here_path = here.split('?').next().unwrap_or("").to_owned();
            let ready = self
                .client
                .execute("return document.readyState", vec![])
                .await
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            if here_path == wanted && ready.as_deref() == Some("complete") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected to be at {wanted}, still at {here}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A screenshot of the whole page (the window grown to fit it, up to a limit),
    /// saved as `<name>.png`.
    pub async fn shot(&self, name: &str) {
        let (width, height) = self
            .client
            .get_window_size()
            .await
            .expect("the window's size");
        // The window's outer size includes what the browser keeps for itself.
        let sizes = self
            .js(
                "return [Math.ceil(document.documentElement.scrollHeight), \
                 window.outerHeight - window.innerHeight]",
                vec![],
            )
            .await;
        let page_height = sizes[0].as_u64().unwrap_or(height);
        let frame = sizes[1].as_u64().unwrap_or(0);
        let tall = (page_height + frame).clamp(height.min(600), 4000);
        self.client
            .set_window_size(width as u32, tall as u32)
            .await
            .expect("growing the window");
        // Let the layout settle at the new size.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let png = self.client.screenshot().await.expect("a screenshot");
        self.client
            .set_window_size(width as u32, height as u32)
            .await
            .expect("restoring the window");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        // Written whole and renamed, so a reader never sees half a file.
        let path = self.shots.join(format!("{name}.png"));
        let partial = self.shots.join(format!(".{name}.png.partial"));
        std::fs::write(&partial, &png).expect("writing the screenshot");
        std::fs::rename(&partial, &path).expect("saving the screenshot");
    }

    /// Ends the WebDriver session (Chromium quits); dropping ends chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group chromedriver leads holds the Chromium processes it started.
        let pid = self.driver.id() as libc::pid_t;
        // SAFETY: signalling the process group of a child this value started and owns.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
