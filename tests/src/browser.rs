//! Headless Chromium for the browser tests: a [`Chromedriver`] process on a free port and
//! [`Browser`] sessions driven over WebDriver (fantoccini), each with a fresh profile.
//!
//! TLS: a session trusts exactly the certificates whose public keys it is given
//! ([`spki_pin`] of the test server's key, Chromium's `--ignore-certificate-errors-spki-list`),
//! not every certificate.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/install-deps.sh`).

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::procs::{free_port, init, kill_and_reap, read_file_lossy, tail, START_TIMEOUT};
use crate::wait::POLL;

/// Bound for one DevTools command sent beside WebDriver.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`Browser::click`] looks an element up again while the page keeps replacing it.
const STALE_RETRY: Duration = Duration::from_secs(10);

/// Where the Chromium binary is: Debian's real binary (not the `/usr/bin/chromium` wrapper
/// script, which adds flags of its own), else `chromium` on the `PATH`.
fn chromium_binary() -> PathBuf {
    let debian = Path::new("/usr/lib/chromium/chromium");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    which("chromium").unwrap_or_else(|| PathBuf::from("chromium"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether this process runs as root (Chromium's sandbox refuses root).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `base64(sha256(SubjectPublicKeyInfo))` of the key in a PEM file: what Chromium's
/// `--ignore-certificate-errors-spki-list` takes.
pub fn spki_pin(key_pem: &Path) -> String {
    let pem = std::fs::read_to_string(key_pem).expect("reading the server key");
    let key = rcgen::KeyPair::from_pem(&pem).expect("parsing the server key");
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(key.public_key_der()))
}

/// `<target>/artifacts`, created: screenshots and other test artifacts (git-ignored).
pub fn artifacts_dir() -> PathBuf {
    // target/debug/… → target/artifacts
    let mut dir = crate::procs::target_dir();
    if dir.ends_with("debug") || dir.ends_with("release") {
        dir.pop();
    }
    let dir = dir.join("artifacts");
    std::fs::create_dir_all(&dir).expect("creating the artifacts directory");
    dir
}

/// A `chromedriver` process in its own process group: on drop the whole group is killed, so
/// no Chromium it started outlives the test.
pub struct Chromedriver {
    child: Option<Child>,
    addr: SocketAddr,
    dir: TempDir,
}

impl Chromedriver {
    /// Starts `chromedriver` on a free port and waits until it accepts connections.
    ///
    /// # Panics
    /// If it is not installed or does not listen within [`START_TIMEOUT`].
    pub fn start() -> Chromedriver {
        init();
        let dir = tempfile::Builder::new()
            .prefix("chromedriver-")
            .tempdir()
            .expect("creating a temp dir for chromedriver");
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = dir.path().join("chromedriver.log");
        let mut child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawning chromedriver (scripts/install-deps.sh installs it): {e}")
            });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "chromedriver exited ({status})\n{}",
                    tail(&read_file_lossy(&log), 30)
                );
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                panic!("chromedriver did not listen on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(POLL);
        }
        Chromedriver {
            child: Some(child),
            addr,
            dir,
        }
    }

    /// `http://127.0.0.1:<port>`, the WebDriver endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// chromedriver's log (with the browser's console output at its default level).
    pub fn logs(&self) -> String {
        read_file_lossy(&self.dir.path().join("chromedriver.log"))
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // The group this chromedriver leads: it and every Chromium it started.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            kill_and_reap(&mut child);
        }
    }
}

/// How to start a [`Browser`].
#[derive(Clone, Debug)]
pub struct BrowserOptions {
    /// Window width and height in CSS pixels.
    pub window: (u32, u32),
    /// SPKI pins (see [`spki_pin`]) of the certificates to accept.
    pub trust_spki: Vec<String>,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        Self {
            window: (1280, 860),
            trust_spki: Vec::new(),
        }
    }
}

/// One headless Chromium session with its own fresh profile (so its own localStorage).
/// Call [`close`](Self::close) at the end; a leftover browser dies with its [`Chromedriver`].
pub struct Browser {
    client: Client,
    driver: String,
    label: String,
    _profile: TempDir,
}

/// The outcome of a script: `undefined`/`null`/`false`/`0`/`""` are not truthy.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

impl Browser {
    /// Opens a session named `label` (used in messages).
    pub async fn start(driver: &Chromedriver, label: &str, options: &BrowserOptions) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("chromium-profile-")
            .tempdir()
            .expect("creating a Chromium profile dir");
        let (width, height) = options.window;
        let mut args = vec![
            "--headless".to_owned(),
            "--disable-gpu".to_owned(),
            // Without these Chromium keeps trying to reach Google services on a closed network.
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-default-apps".to_owned(),
            "--disable-extensions".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if running_as_root() {
            args.push("--no-sandbox".to_owned());
        }
        if !options.trust_spki.is_empty() {
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                options.trust_spki.join(",")
            ));
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium_binary(), "args": args }),
        );
        let connect = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url())
            .await;
        let client = match connect {
            Ok(client) => client,
            Err(e) => panic!(
                "{label}: starting Chromium failed: {e}\n--- chromedriver log ---\n{}",
                tail(&driver.logs(), 40)
            ),
        };
        Browser {
            client,
            driver: driver.url(),
            label: label.to_owned(),
            _profile: profile,
        }
    }

    /// The session's name.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The WebDriver client, for anything the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a Chrome DevTools Protocol command (chromedriver's `goog/cdp/execute`), e.g.
    /// `Network.setBlockedURLs`; returns its result.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        let session = match self.client.session_id().await {
            Ok(Some(id)) => id,
            other => panic!("{}: no WebDriver session id: {other:?}", self.label),
        };
        let url = format!("{}/session/{session}/goog/cdp/execute", self.driver);
        // As patient as the WebDriver commands: a busy machine can make Chromium slow.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("building an HTTP client");
        let reply = http
            .post(&url)
            .json(&json!({ "cmd": cmd, "params": params }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {cmd}: {e:?}", self.label));
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "{}: {cmd}: {status} {body}",
            self.label
        );
        body.get("value").cloned().unwrap_or(Value::Null)
    }

    /// Navigates to `url` (returns once the page has loaded).
    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            panic!("{}: opening {url}: {e}", self.label);
        }
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        match self.client.execute(script, args).await {
            Ok(v) => v,
            Err(e) => panic!("{}: script failed: {e}\n{script}", self.label),
        }
    }

    /// Polls `script` (with `args`) every 20 ms until it returns something truthy, and
    /// returns that; panics naming `what` after `timeout`.
    pub async fn wait_js(
        &self,
        timeout: Duration,
        what: &str,
        script: &str,
        args: Vec<Value>,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.client.execute(script, args.clone()).await {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => v,
                Err(e) => json!(format!("error: {e}")),
            };
            if Instant::now() >= deadline {
                panic!(
                    "{}: timed out after {timeout:?} waiting for: {what} (last result: {last})",
                    self.label
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The `textContent` of the first element matching `css` (`None` if there is none).
    pub async fn text(&self, css: &str) -> Option<String> {
        let value = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await;
        value.as_str().map(str::to_owned)
    }

    /// Waits until the element matching `css` has the text `expected`.
    pub async fn wait_text(&self, timeout: Duration, css: &str, expected: &str) {
        self.wait_js(
            timeout,
            &format!("{css} to read {expected:?}"),
            "const e = document.querySelector(arguments[0]); \
             return !!e && e.textContent === arguments[1];",
            vec![json!(css), json!(expected)],
        )
        .await;
    }

    /// Types `text` into the element matching `css` (cleared first), like a user would.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("{}: no element {css}: {e}", self.label),
        };
        if let Err(e) = element.clear().await {
            panic!("{}: clearing {css}: {e}", self.label);
        }
        if let Err(e) = element.send_keys(text).await {
            panic!("{}: typing into {css}: {e}", self.label);
        }
    }

    /// Clicks the element matching `css`. The page re-renders lists as updates come (the
    /// room list on presence and new rooms): an element replaced between its lookup and the
    /// click is looked up again, as a user's click lands on what is there now.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + STALE_RETRY;
        loop {
            let element = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e,
                Err(e) => panic!("{}: no element {css}: {e}", self.label),
            };
            match element.click().await {
                Ok(_) => return,
                Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {}
                Err(e) => panic!("{}: clicking {css}: {e}", self.label),
            }
        }
    }

    /// Saves a PNG screenshot of the viewport to `path` and returns the path.
    pub async fn screenshot(&self, path: &Path) -> PathBuf {
        let png = match self.client.screenshot().await {
            Ok(png) => png,
            Err(e) => panic!("{}: screenshot: {e}", self.label),
        };
        std::fs::write(path, png).expect("writing the screenshot");
        path.to_path_buf()
    }

    /// Ends the session (Chromium exits).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
