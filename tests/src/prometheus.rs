//! A real Prometheus server (Debian's `prometheus`) on a port of the test range, in a temp
//! dir, scraping one target every second; queries go through its HTTP API.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::free_port;

/// A running Prometheus that scrapes `/metrics` of one target.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port, path `/metrics`) every second, and
    /// waits until it is ready.
    pub async fn scraping(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian: apt-get install prometheus)");
        let prometheus = Self { child, port, dir };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            let ready = client
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("prometheus did not start:\n{}", prometheus.log());
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; the `data.result` array, or the error Prometheus gave.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let response = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Samples of the target's `up` so far: scrapes that reached it.
    pub async fn scrapes(&self) -> usize {
        self.query("count_over_time(up{job=\"sluice\"}[5m])")
            .await
            .ok()
            .and_then(|r| r.first().cloned())
            .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
