//! `hearth serve` as a process of its own, for the crash tests: its data directory and port,
//! the settings of a federation on loopback with quick retries, the CLI on the same
//! configuration, and SIGKILL (also when dropped).

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct ServerProcess {
    pub name: &'static str,
    pub dir: PathBuf,
    pub port: u16,
    /// Settings beyond the shared ones, as `HEARTH_...` variables.
    pub extra_env: Vec<(&'static str, String)>,
    /// How many times it was started.
    pub runs: usize,
    child: Option<Child>,
}

impl ServerProcess {
    /// A server named `name` (its instance is `NAME.localhost:PORT`) on `dir`, on a free port.
    pub fn new(name: &'static str, dir: PathBuf, extra_env: Vec<(&'static str, String)>) -> ServerProcess {
        ServerProcess { name, dir, port: free_port(), extra_env, runs: 0, child: None }
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("HEARTH_DATA_DIR", &self.dir)
            .env("HEARTH_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("HEARTH_FEDERATION__ALLOW_PRIVATE_ADDRESSES", "true")
            .env("HEARTH_FEDERATION__ALLOW_HTTP", "true")
            .env("HEARTH_REPLICATION__DEBOUNCE_MS", "20")
            .env("HEARTH_REPLICATION__SWEEP_MS", "100")
            .env("HEARTH_REPLICATION__RETRY_BASE_MS", "50")
            .env("HEARTH_REPLICATION__RETRY_MAX_MS", "400")
            .env("HEARTH_LOG", "info,actix_server=warn,hearth::app=warn")
            // What the server does about it is tested (`memory`): not what the runner's
            // environment happens to say.
            .env_remove("MALLOC_ARENA_MAX");
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
    }

    /// Runs `hearth ARGS` on this server's configuration; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        self.env(&mut cmd);
        let out = cmd.args(args).stdin(Stdio::null()).output().expect("hearth cli");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `hearth ARGS` on this server's configuration, whatever its exit status.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        self.env(&mut cmd);
        cmd.args(args).stdin(Stdio::null()).output().expect("hearth cli")
    }

    pub fn domain(&self) -> String {
        format!("{}.localhost:{}", self.name, self.port)
    }

    /// Its log, appended to by every run.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("serve.log")
    }

    /// Starts `hearth serve` and waits until it answers `/status`.
    pub async fn start(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        self.env(&mut cmd);
        cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
        self.child = Some(cmd.spawn().expect("hearth serve"));
        self.runs += 1;
        let url = format!("http://127.0.0.1:{}/status", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(&url).await.map(|r| r.status().is_success()).unwrap_or(false) {
            assert!(Instant::now() < deadline, "{} did not start", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (a name `kill -s` takes: `INT`, `TERM`) to the running server.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("a running server");
        let status = Command::new("kill").args(["-s", signal, &pid.to_string()]).status().expect("kill");
        assert!(status.success(), "kill -s {signal} {pid}");
    }

    /// Waits up to `within` for the process to exit by itself: its exit status, `None` when it
    /// is still running then (it is left running, and killed when dropped).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and waits for the process to end.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().unwrap();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Calls `path` on the server of `domain` with a bearer `token` (and a JSON `body`), asserting
/// a 2xx; the JSON answer (`null` when none).
pub async fn call(
    domain: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut r = super::browser().request(method, format!("http://{domain}{path}")).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}
