//! A throwaway S3-compatible server (moto) for the archive tests.

use std::process::ChildStdin;
use std::sync::{Mutex, OnceLock};

use crate::{free_port, guardian, http};

/// A throwaway S3-compatible server: moto's server mode (`moto_server`, from PyPI's
/// `moto[server]`) on a free port of 127.0.0.1. Real HTTP and the real S3 API (multipart
/// uploads included); moto keeps objects in memory and accepts any credentials. Like the
/// PostgreSQL server, a shell guardian stops it when this process's end of its stdin closes.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    port: u16,
    _guardian: Mutex<ChildStdin>,
}

static S3: OnceLock<S3Server> = OnceLock::new();

/// The shared S3 server, started on first use.
pub fn s3_server() -> &'static S3Server {
    S3.get_or_init(S3Server::start)
}

impl S3Server {
    /// Starts a server of its own.
    pub fn start() -> S3Server {
        S3Server::start_with(&[])
    }

    /// Starts a server of its own with extra environment for moto (for example
    /// `INITIAL_NO_AUTH_ACTION_COUNT=0`: every request must be signed by a known key).
    pub fn start_with(moto_env: &[(&str, &str)]) -> S3Server {
        let port = free_port();
        let script = r#"
set -u
moto_server -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
pid=$!
i=0
until (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do
  i=$((i+1)); if [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; then echo failed; cat "$LOG"; exit 1; fi
  sleep 0.1
done
echo ready
exec >/dev/null 2>&1
read _ignored || true
kill $pid; wait $pid; rm -f "$LOG"
"#;
        let log = std::env::temp_dir().join(format!("moto-{port}.log"));
        let mut envs = vec![
            ("PORT".to_string(), port.to_string()),
            ("LOG".to_string(), log.display().to_string()),
        ];
        envs.extend(moto_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let stdin = guardian(
            "bash",
            script,
            envs,
            "moto_server (is `moto[server]` installed?)",
        );
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            _guardian: Mutex::new(stdin),
        }
    }

    /// The AWS environment that points a client at this server (test credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "partwarden-test-key".into()),
            (
                "AWS_SECRET_ACCESS_KEY",
                "partwarden-test-secret-do-not-log".into(),
            ),
        ]
    }

    /// Sends one plain HTTP/1.1 request (moto needs no signature) and returns the status and
    /// body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        http(self.port, method, path, body)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.request("PUT", &format!("/{name}"), b"");
        assert!(
            status == 200,
            "creating bucket {name}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// The keys in a bucket under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = self.request(
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
            b"",
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body);
        let mut keys: Vec<String> = text
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }
}

impl S3Server {
    /// The size of the object `key` in `bucket`, from a listing (objects are private: an
    /// unsigned GET is refused, an unsigned listing is not).
    pub fn size(&self, bucket: &str, key: &str) -> Option<u64> {
        let (status, body) =
            self.request("GET", &format!("/{bucket}?list-type=2&prefix={key}"), b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body);
        text.split("<Contents>").skip(1).find_map(|c| {
            let k = c.split("<Key>").nth(1)?.split("</Key>").next()?;
            if k != key {
                return None;
            }
            c.split("<Size>")
                .nth(1)?
                .split("</Size>")
                .next()?
                .parse()
                .ok()
        })
    }
}
