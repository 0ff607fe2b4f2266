//! A throwaway Prometheus for the alert and scrape tests.

use std::process::ChildStdin;
use std::sync::Mutex;

use crate::{free_port, guardian, http};

/// A throwaway Prometheus (Debian's `prometheus` package) on a free port of 127.0.0.1, with
/// the scrape configuration and rule files the test gives, its storage in a temporary
/// directory; stopped (by a guardian shell, as the other servers) when this process's end of
/// its stdin closes, or when the value is dropped.
pub struct Prometheus {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    _dir: tempfile::TempDir,
    _guardian: Mutex<ChildStdin>,
}

impl Prometheus {
    /// Starts Prometheus with `config` (its YAML; rule files may be given by absolute path).
    pub fn start(config: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let script = r#"
set -u
prometheus --config.file="$CONFIG" --storage.tsdb.path="$DIR/data" \
  --web.listen-address="127.0.0.1:$PORT" --log.level=warn >"$DIR/log" 2>&1 &
pid=$!
i=0
until (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do
  i=$((i+1)); if [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; then echo failed; cat "$DIR/log"; exit 1; fi
  sleep 0.1
done
echo ready
exec >/dev/null 2>&1
read _ignored || true
kill $pid; wait $pid
"#;
        let stdin = guardian(
            "bash",
            script,
            [
                ("CONFIG", config_path.display().to_string()),
                ("DIR", dir.path().display().to_string()),
                ("PORT", port.to_string()),
            ],
            "prometheus (is Debian's prometheus package installed?)",
        );
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            port,
            _dir: dir,
            _guardian: Mutex::new(stdin),
        };
        // Listening is not ready: queries answer 503 until the TSDB has started.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while prometheus.get("/-/ready").0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus did not become ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        prometheus
    }

    /// GET `path_and_query` (already URL-encoded) from its HTTP API: status and body.
    pub fn get(&self, path_and_query: &str) -> (u16, String) {
        let (status, body) = http(self.port, "GET", path_and_query, b"");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Runs an instant query (PromQL) and returns the JSON body.
    pub fn query(&self, promql: &str) -> (u16, String) {
        self.get(&format!("/api/v1/query?query={}", url_encode(promql)))
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
