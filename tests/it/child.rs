//! The real `tokenauth` binary as a child process, for tests that need
//! signals or a separate process (shutdown, crashes, logs).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use sha2::{Digest, Sha256};
use tokenauth::domain::secret::Secret;
use tonic::transport::Channel;

use crate::harness::{Authed, bearer_of, wait_until_serving};

/// A running `tokenauth serve` child.
pub struct ChildServer {
    child: Child,
    /// `http://host:port` of the gRPC server.
    pub url: String,
    pub channel: Channel,
    /// Everything the child wrote to stderr (its logs), line by line.
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// A data directory and a config file for child servers, reused across restarts.
pub struct ChildSetup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub control_plane: String,
}

impl ChildSetup {
    /// A config admitting a fresh control-plane credential; `extra` is appended TOML.
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let control_plane = Secret::generate_control_plane()
            .unwrap()
            .expose()
            .to_owned();
        let hash: String = Sha256::digest(control_plane.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let config = dir.path().join("tokenauth.toml");
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n{extra}\n[[control_plane.credentials]]\nname = \"cp\"\nsha256 = \"{hash}\"\n",
            dir.path().join("data")
        );
        std::fs::write(&config, text).unwrap();
        Self {
            dir,
            config,
            control_plane,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A setup sharing this one's credential, over another data directory.
    pub fn with_data_dir(&self, data_dir: &Path) -> ChildSetup {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let old = format!("data_dir = {:?}", self.data_dir());
        let config = dir.path().join("tokenauth.toml");
        std::fs::write(
            &config,
            text.replace(&old, &format!("data_dir = {data_dir:?}")),
        )
        .unwrap();
        ChildSetup {
            dir,
            config,
            control_plane: self.control_plane.clone(),
        }
    }

    pub async fn start(&self, log_filter: &str) -> ChildServer {
        ChildServer::start(&self.config, log_filter).await
    }

    /// Like [`Self::start`], with the child's file descriptor limit
    /// (`ulimit -n`) set to `max_fds`.
    pub async fn start_with_fd_limit(&self, log_filter: &str, max_fds: u32) -> ChildServer {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {max_fds} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_tokenauth"));
        ChildServer::spawn(command, &self.config, log_filter, &[]).await
    }
}

impl ChildServer {
    pub async fn start(config: &Path, log_filter: &str) -> ChildServer {
        Self::start_with_args(config, log_filter, &[]).await
    }

    /// [`Self::start`], with `args` after `serve --config FILE`.
    pub async fn start_with_args(config: &Path, log_filter: &str, args: &[&str]) -> ChildServer {
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_tokenauth")),
            config,
            log_filter,
            args,
        )
        .await
    }

    /// Runs `command serve --config <config> <args>` (the binary, or a shell
    /// that execs it, so that the pid is the server's).
    async fn spawn(
        mut command: Command,
        config: &Path,
        log_filter: &str,
        args: &[&str],
    ) -> ChildServer {
        let mut child = command
            .args(["serve", "--config"])
            .arg(config)
            .args(args)
            .env("TOKENAUTH_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line)
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr =
            tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(30)))
                .await
                .unwrap()
                .unwrap_or_else(|_| {
                    panic!(
                        "the child never logged its address: {:?}",
                        logs.lock().unwrap()
                    )
                });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        wait_until_serving(channel.clone()).await;
        ChildServer {
            child,
            url: format!("http://{addr}"),
            channel,
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn tokens(
        &self,
        control_plane: &str,
    ) -> tokenauth::proto::token_service_client::TokenServiceClient<Authed> {
        tokenauth::proto::token_service_client::TokenServiceClient::with_interceptor(
            self.channel.clone(),
            bearer_of(Some(control_plane)),
        )
    }

    pub fn check(&self) -> tokenauth::proto::check_service_client::CheckServiceClient<Channel> {
        tokenauth::proto::check_service_client::CheckServiceClient::new(self.channel.clone())
    }

    /// Sends `signal` (e.g. "TERM", "KILL") with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Polls until the child exits on its own and returns its exit code
    /// (None if killed by a signal); panics saying `why` if it keeps running
    /// for minutes (a guard against a hung test, not a timing assertion).
    pub async fn exits_on_its_own(&mut self, why: &str) -> Option<i32> {
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the child kept running: {why}");
    }

    /// Waits for the child to exit and returns its exit code (None if killed by a signal).
    pub async fn wait(mut self) -> Option<i32> {
        tokio::task::spawn_blocking(move || self.child.wait().unwrap().code())
            .await
            .unwrap()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in the "tokenauth listening" log line, in text or JSON format.
fn listening_addr(line: &str) -> Option<String> {
    if !line.contains("tokenauth listening") {
        return None;
    }
    let start = line.find("local_addr")? + "local_addr".len();
    let rest = line[start..].trim_start_matches(['=', '"', ':', ' ']);
    let end = rest
        .find(|c: char| c == '"' || c.is_whitespace())
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// Runs the binary with `args` and environment `env`; returns (exit code, stdout, stderr).
pub fn run_command(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenauth"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
