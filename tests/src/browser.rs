//! A real browser for the tests that need one: Debian's `chromium`, headless, loading a page
//! from a small origin server on loopback. The page reports what it saw by fetching
//! `/report?…` from its own origin; the test reads the report.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The browser binary: `SLUICE_TEST_CHROMIUM`, or `chromium` / `chromium-browser` on PATH.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_TEST_CHROMIUM") {
        return path.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        }) {
            return found;
        }
    }
    panic!("no chromium on PATH: install Debian's `chromium` (the README's prerequisites)");
}

/// An origin server: `/` is the page, `/report?DATA` hands DATA to the test.
pub struct PageServer {
    pub addr: std::net::SocketAddr,
    reports: mpsc::UnboundedReceiver<String>,
    page: std::sync::Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    pub async fn start(page: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, reports) = mpsc::unbounded_channel();
        let page = std::sync::Arc::new(std::sync::Mutex::new(page));
        let served = page.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let page = served.lock().expect("page").clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let target = text.split(' ').nth(1).unwrap_or("/").to_string();
                    let (status, kind, body) = if let Some(data) = target.strip_prefix("/report?") {
                        let _ = tx.send(percent_decode(data));
                        ("200 OK", "text/plain", "ok".to_string())
                    } else if target == "/" {
                        ("200 OK", "text/html; charset=utf-8", page)
                    } else {
                        ("404 Not Found", "text/plain", "no".to_string())
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self {
            addr,
            reports,
            page,
            task,
        }
    }

    /// What `/` serves from now on.
    pub fn set_page(&self, page: String) {
        *self.page.lock().expect("page") = page;
    }

    /// `http://127.0.0.1:PORT`: the page's origin.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Loads the page in headless chromium and waits (at most `timeout`) for its report.
    pub async fn run_in_browser(&mut self, timeout: Duration) -> String {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser(
            Command::new(chromium())
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-proxy-server",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(format!("{}/", self.origin()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromium"),
        );
        let report = tokio::time::timeout(timeout, self.reports.recv()).await;
        browser.stop();
        report
            .expect("the page reported within the time")
            .expect("a report")
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The browser process, killed however the test ends.
struct Browser(Child);

impl Browser {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
