//! Runs documentation examples in order, as an operator following them
//! would, with the real `tokenauth` and the real grpcurl, in a directory of
//! their own; fills in only the placeholders listed in `substitute`; and
//! compares each shown output with what the command printed.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::markdown::{Example, commands, only_assigns, program_words};
use crate::{pg::PgCluster, tls::Pki, tools::tool};

/// Programs the examples use that one machine cannot run, and why; a
/// command of theirs is left out (the rest of its block still runs).
pub const NOT_RUN: &[(&str, &str)] = &[
    ("docker", "needs a container engine"),
    ("kubectl", "needs a Kubernetes cluster"),
    ("istioctl", "needs a Kubernetes cluster with Istio"),
    ("scripts/test", "runs every test, this one included"),
];

/// The PostgreSQL URL the examples show, served by a throwaway cluster.
const EXAMPLE_DATABASE: &str = "postgres://tokenauth@db.internal:5432/tokenauth";

/// A token the walkthrough issued, by its name.
#[derive(Default)]
struct Issued {
    id: String,
    secret: String,
}

/// A `tokenauth serve` the walkthrough started.
struct Served {
    child: Child,
    port: u16,
    logs: Arc<Mutex<Vec<String>>>,
}

/// One walkthrough: a directory standing for the machine's file system, the
/// shell variables set so far, the server running now, and what earlier
/// outputs named.
pub struct Walkthrough {
    root: tempfile::TempDir,
    bin: tempfile::TempDir,
    prelude: Vec<String>,
    server: Option<Served>,
    tokens: HashMap<String, Issued>,
    fields: HashMap<String, String>,
    database: Option<PgCluster>,
    /// The CA behind the examples' server certificate
    /// (`/etc/tokenauth/tls/server.pem`), once an example names it.
    server_ca: Option<std::path::PathBuf>,
    /// What ran, for the failure messages.
    pub transcript: Vec<String>,
}

impl Walkthrough {
    pub fn new() -> Self {
        let bin = tempfile::tempdir().unwrap();
        for (name, path) in [
            ("tokenauth", PathBuf::from(env!("CARGO_BIN_EXE_tokenauth"))),
            ("grpcurl", tool("grpcurl")),
        ] {
            std::os::unix::fs::symlink(path, bin.path().join(name)).unwrap();
        }
        Self {
            root: tempfile::tempdir().unwrap(),
            bin,
            prelude: Vec::new(),
            server: None,
            tokens: HashMap::new(),
            fields: HashMap::new(),
            database: None,
            server_ca: None,
            transcript: Vec::new(),
        }
    }

    /// Runs every command of `example`; the shown output, if any, is
    /// compared with its last command's.
    pub fn run(&mut self, example: &Example) {
        let place = example.block.place();
        let all = commands(&example.block.text);
        for (i, command) in all.iter().enumerate() {
            let words = program_words(command);
            if let Some((program, why)) = NOT_RUN.iter().find(|(p, _)| words.first() == Some(p)) {
                self.transcript
                    .push(format!("{place}: not run ({program} {why}): {command}"));
                continue;
            }
            let command = self.substitute(command, &place);
            let words = program_words(&command);
            self.transcript.push(format!("{place}: {command}"));
            if only_assigns(&command) {
                self.prelude.push(command);
                let output = self.shell(&self.script("true"));
                assert!(output.status.success(), "{place}: {}", describe(&output));
                continue;
            }
            if words.starts_with(&["tokenauth", "serve"]) {
                self.serve(&command, &place);
                continue;
            }
            let output = self.shell(&self.script(&command));
            let shown = (i + 1 == all.len())
                .then_some(example.output.as_ref())
                .flatten();
            match shown {
                Some(shown) => {
                    let problems = compare(&shown.lang, &shown.text, &output);
                    assert!(
                        problems.is_empty(),
                        "{place}: `{command}` does not print what {} shows: {problems:#?}\n{}",
                        shown.place(),
                        describe(&output)
                    );
                }
                None => assert!(
                    output.status.success(),
                    "{place}: `{command}` failed: {}",
                    describe(&output)
                ),
            }
            self.remember(&output);
        }
    }

    /// The throwaway cluster behind the examples' database, started on first
    /// use. It serves TLS, as a database on another host must (tokenauth
    /// refuses one without it), with a certificate from a CA of the test's
    /// own, which the examples' CA files (`db-ca.pem`, `/etc/ssl/db-ca.pem`)
    /// hold.
    fn database(&mut self) -> &PgCluster {
        if self.database.is_none() {
            let mut cluster = PgCluster::start();
            let pki = Pki::new("example database CA");
            let (cert, key) = pki.issue(&["127.0.0.1"]);
            cluster.restart_with_tls(&cert, &key);
            for file in ["db-ca.pem", "etc/ssl/db-ca.pem"] {
                let path = self.root.path().join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &pki.ca_pem).unwrap();
            }
            self.database = Some(cluster);
        }
        self.database.as_ref().unwrap()
    }

    /// The certificate and key the examples' `[tls]` files name, issued for
    /// 127.0.0.1 by a CA of the test's own, written on first use.
    fn server_tls(&mut self) {
        if self.server_ca.is_none() {
            let pki = Pki::new("example server CA");
            let (cert, key) = pki.issue(&["127.0.0.1"]);
            let dir = self.root.path().join("etc/tokenauth/tls");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("server.pem"), cert).unwrap();
            let key_file = dir.join("server.key");
            std::fs::write(&key_file, key).unwrap();
            std::fs::set_permissions(
                &key_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            let ca = self.root.path().join("server-ca.pem");
            std::fs::write(&ca, &pki.ca_pem).unwrap();
            self.server_ca = Some(ca);
        }
    }

    /// The command with its placeholders filled in.
    fn substitute(&mut self, command: &str, place: &str) -> String {
        let mut text = command.replace("cargo run --release --", "tokenauth");
        text = text.replace("0.0.0.0:50051", "127.0.0.1:0");
        if text.contains("localhost:50051") || text.contains("127.0.0.1:50051") {
            let port = self
                .server
                .as_ref()
                .unwrap_or_else(|| panic!("{place}: `{command}` needs a running server"))
                .port;
            text = text
                .replace("localhost:50051", &format!("localhost:{port}"))
                .replace("127.0.0.1:50051", &format!("127.0.0.1:{port}"));
        }
        if text.contains(EXAMPLE_DATABASE) {
            let url = self.database().url();
            text = text.replace(EXAMPLE_DATABASE, &url);
        }
        if text.contains("/etc/tokenauth/tls/") {
            self.server_tls();
        }
        text = text.replace("pepper.from-your-secret-store", "data/pepper");
        text = self.rooted(&text);
        while let Some(start) = text.find('<') {
            let Some(end) = text[start..].find('>').map(|e| start + e) else {
                break;
            };
            let placeholder = &text[start + 1..end];
            let value = self
                .placeholder(placeholder)
                .unwrap_or_else(|| panic!("{place}: no value for <{placeholder}> in `{command}`"));
            text.replace_range(start..=end, &value);
        }
        text
    }

    /// `<id of NAME>`, `<secret of NAME>` (the latest, after a rotation) and
    /// `<FIELD above>` (that field of the latest output that had it).
    fn placeholder(&self, placeholder: &str) -> Option<String> {
        if let Some(name) = placeholder.strip_prefix("id of ") {
            return self.tokens.get(name).map(|t| t.id.clone());
        }
        if let Some(name) = placeholder.strip_prefix("secret of ") {
            return self.tokens.get(name).map(|t| t.secret.clone());
        }
        let field = placeholder.strip_suffix(" above")?;
        self.fields.get(field).cloned()
    }

    /// Absolute paths under /etc, /run and /var are taken inside the
    /// walkthrough's directory, which stands for the machine; their parent
    /// directories exist, as on a machine, and a secret file the examples
    /// expect (a database password) holds a placeholder password.
    fn rooted(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = ["/etc/", "/run/", "/var/"]
            .iter()
            .filter_map(|p| rest.find(p))
            .filter(|&i| i == 0 || rest[..i].ends_with([' ', '=', '\n']))
            .min()
        {
            out.push_str(&rest[..at]);
            let end = rest[at..]
                .find(|c: char| c.is_whitespace() || c == '"')
                .map_or(rest.len(), |e| at + e);
            let path = self.root.path().join(&rest[at + 1..end]);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            if rest[at..end].starts_with("/run/secrets/") && !path.exists() {
                std::fs::write(&path, "unused: the test database trusts loopback\n").unwrap();
            }
            out.push_str(path.to_str().unwrap());
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    /// A bash script: the variables set so far, then `command`.
    fn script(&self, command: &str) -> String {
        let mut script = String::from("set -eo pipefail\n");
        for line in &self.prelude {
            script.push_str(line);
            script.push('\n');
        }
        script.push_str(command);
        script.push('\n');
        script
    }

    fn bash(&self, script: &str) -> Command {
        let mut bash = Command::new("bash");
        bash.arg("-c")
            .arg(script)
            .current_dir(self.root.path())
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.bin.path().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            // A free loopback port for every server (an example's --listen
            // flag still wins), and nothing from the test's environment.
            .env("TOKENAUTH_LISTEN", "127.0.0.1:0")
            .env_remove("TOKENAUTH_CONFIG")
            .env_remove("TOKENAUTH_DATA_DIR")
            .env_remove("TOKENAUTH_STORE")
            .env_remove("TOKENAUTH_LOG")
            .env_remove("TOKENAUTH_LOG_FORMAT")
            // The tests' own setting (where the pinned tools are), which the
            // server would read as a configuration field and refuse.
            .env_remove("TOKENAUTH_TOOLS_VENV")
            .stdin(Stdio::null());
        bash
    }

    /// Runs `script` to its end (a guard kills it after two minutes: an
    /// example that hangs fails instead of hanging the suite).
    fn shell(&self, script: &str) -> Output {
        let mut child = self
            .bash(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let read = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let stdout = read(Box::new(child.stdout.take().unwrap()));
        let stderr = read(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("still running after two minutes: {script}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }

    /// Starts `command` (a `tokenauth serve`), after stopping the server
    /// running now, and polls until it logs its address and reports SERVING.
    fn serve(&mut self, command: &str, place: &str) {
        self.stop_server();
        let mut child = self
            .bash(&self.script(&format!("exec {command}")))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            let found = logs.lock().unwrap().iter().find_map(|line| {
                let line: Value = serde_json::from_str(line).ok()?;
                (line["message"] == "tokenauth listening").then(|| {
                    let addr: std::net::SocketAddr =
                        line["local_addr"].as_str().unwrap().parse().unwrap();
                    addr.port()
                })
            });
            if let Some(port) = found {
                break port;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{place}: `{command}` exited ({status}): {:#?}",
                    logs.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{place}: `{command}` never logged its address: {:#?}",
                logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Once the examples have exported the `[tls]` files, the server
        // speaks TLS only.
        let transport = match &self.server_ca {
            Some(ca) => format!("-cacert {}", ca.display()),
            None => "-plaintext".to_owned(),
        };
        let health = format!(
            "grpcurl {transport} 127.0.0.1:{port} grpc.health.v1.Health/Check | grep -q SERVING"
        );
        while !self.shell(&health).status.success() {
            assert!(
                Instant::now() < deadline,
                "{place}: `{command}` never reported SERVING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.server = Some(Served { child, port, logs });
    }

    /// Stops the running server as an operator would (SIGTERM) and waits
    /// for it to exit cleanly.
    pub fn stop_server(&mut self) {
        if let Some(mut served) = self.server.take() {
            let pid = served.child.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            let status = served.child.wait().unwrap();
            assert!(
                status.success(),
                "the server exited with {status}: {:#?}",
                served.logs.lock().unwrap()
            );
        }
    }

    /// Notes the tokens and fields an output names, for later placeholders.
    fn remember(&mut self, output: &Output) {
        // A stream's last message (a watch's last cursor), or the one answer.
        let Some(Ok(json)) = serde_json::Deserializer::from_slice(&output.stdout)
            .into_iter::<Value>()
            .last()
        else {
            return;
        };
        if let Some(name) = json["token"]["name"].as_str() {
            let issued = self.tokens.entry(name.to_owned()).or_default();
            issued.id = json["token"]["id"].as_str().unwrap().to_owned();
            if let Some(secret) = json["secret"].as_str() {
                issued.secret = secret.to_owned();
            }
        }
        if let Some(fields) = json.as_object() {
            for (key, value) in fields {
                if let Some(value) = value.as_str() {
                    self.fields.insert(key.clone(), value.to_owned());
                }
            }
        }
    }
}

impl Drop for Walkthrough {
    fn drop(&mut self) {
        if let Some(mut served) = self.server.take() {
            let _ = served.child.kill();
            let _ = served.child.wait();
        }
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// How `output` differs from the output a document shows (`lang` is the
/// shown block's: `json` or `text`). A shown `ERROR:` is grpcurl's report of
/// a failed call, and a shown `error:` tokenauth's, on stderr with a failing
/// exit status. A `json-stream` is the messages of a server-streaming call,
/// one JSON value each, ended by grpcurl's `-max-time` (DeadlineExceeded)
/// or by the server.
pub fn compare(lang: &str, shown: &str, output: &Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut problems = Vec::new();
    match lang {
        "json" => {
            if !output.status.success() {
                problems.push(format!("it failed ({})", output.status));
            }
            let shown: Value = serde_json::from_str(shown)
                .unwrap_or_else(|e| panic!("the shown output is not JSON: {e}"));
            match serde_json::from_str::<Value>(&stdout) {
                Ok(printed) => same_shape("", &shown, &printed, &mut problems),
                Err(e) => problems.push(format!("it printed no JSON ({e})")),
            }
        }
        "json-stream" => {
            let stderr_deadline = stderr.contains("Code: DeadlineExceeded");
            if !output.status.success() && !stderr_deadline {
                problems.push(format!("it failed ({}): {stderr}", output.status));
            }
            let stream = |text: &str| {
                serde_json::Deserializer::from_str(text)
                    .into_iter::<Value>()
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            };
            let shown = stream(shown)
                .unwrap_or_else(|e| panic!("the shown output is not JSON values: {e}"));
            match stream(&stdout) {
                Ok(printed) => same_shape("", &shown, &printed, &mut problems),
                Err(e) => problems.push(format!("it printed no JSON stream ({e})")),
            }
        }
        "text" if shown.starts_with("ERROR:") || shown.starts_with("error:") => {
            if output.status.success() {
                problems.push("it succeeded, where an error is shown".into());
            }
            if stderr.trim_end() != shown.trim_end() {
                problems.push(format!("stderr is\n{stderr}"));
            }
        }
        "text" => {
            if !output.status.success() {
                problems.push(format!("it failed ({})", output.status));
            }
            if stdout.trim_end() != shown.trim_end() {
                problems.push(format!("stdout is\n{stdout}"));
            }
        }
        other => panic!("an output block of language {other:?}"),
    }
    problems
}

/// Whether `text` is an RFC 3339 UTC time, as protobuf's JSON writes one.
fn is_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && text.ends_with('Z')
        && text[..4].bytes().all(|c| c.is_ascii_digit())
}

/// The same keys at every level, arrays of the same length, and the same
/// values, except where the shown value stands for any of its kind: a
/// string ending in `...` (any longer string starting like it) and a time
/// (any time).
pub fn same_shape(path: &str, shown: &Value, printed: &Value, problems: &mut Vec<String>) {
    match (shown, printed) {
        (Value::Object(shown), Value::Object(printed)) => {
            for key in shown.keys() {
                if !printed.contains_key(key) {
                    problems.push(format!("{path}.{key}: shown, not printed"));
                }
            }
            for (key, value) in printed {
                match shown.get(key) {
                    Some(expected) => {
                        same_shape(&format!("{path}.{key}"), expected, value, problems);
                    }
                    None => problems.push(format!("{path}.{key}: printed ({value}), not shown")),
                }
            }
        }
        (Value::Array(shown), Value::Array(printed)) => {
            if shown.len() == printed.len() {
                for (i, (a, b)) in shown.iter().zip(printed).enumerate() {
                    same_shape(&format!("{path}[{i}]"), a, b, problems);
                }
            } else {
                problems.push(format!(
                    "{path}: {} items shown, {} printed",
                    shown.len(),
                    printed.len()
                ));
            }
        }
        (Value::String(shown), Value::String(printed)) => {
            let matches = match shown.strip_suffix("...") {
                Some(prefix) => printed.starts_with(prefix) && printed.len() > prefix.len(),
                None if is_time(shown) => is_time(printed),
                None => shown == printed,
            };
            if !matches {
                problems.push(format!("{path}: shown {shown:?}, printed {printed:?}"));
            }
        }
        (shown, printed) => {
            if shown != printed {
                problems.push(format!("{path}: shown {shown}, printed {printed}"));
            }
        }
    }
}
