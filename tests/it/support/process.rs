//! The server binary, run as a process of its own: for what only a process shows (its output,
//! its exit, `kill -9`, several replicas on one database, its limits).

use std::path::PathBuf;

use uuid::Uuid;

/// The server binary, run as a process of its own.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base: String,
    /// What it printed to stdout before it listened.
    pub printed: String,
    /// Where its stderr (its logs) goes.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `vocode-server serve` on a free port and waits for its "listening" line.
    pub fn start(db_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        Self::start_with(db_url, "127.0.0.1:0", env, |_| {})
    }

    /// Starts it on `listen`, with the command changed by `tweak` (to run it as another user,
    /// say) before it is spawned.
    pub fn start_with(
        db_url: &str,
        listen: &str,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> ServerProcess {
        Self::try_start(db_url, listen, env, tweak)
            .unwrap_or_else(|printed| panic!("the server did not start: {printed}"))
    }

    /// Like [`start_with`](Self::start_with), with the binary run by `launcher`: a command line
    /// that ends by running the rest of its arguments in its own place (`sh -c '…; exec "$0" "$@"'`),
    /// for a process state `Command` cannot set (an ignored signal, say).
    pub fn start_through(
        launcher: &[&str],
        db_url: &str,
        listen: &str,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> ServerProcess {
        Self::spawn(launcher, db_url, listen, env, tweak)
            .unwrap_or_else(|printed| panic!("the server did not start: {printed}"))
    }

    /// Like [`start_with`](Self::start_with); a server that exits before it listens is an
    /// `Err` with what it printed.
    pub fn try_start(
        db_url: &str,
        listen: &str,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Result<ServerProcess, String> {
        Self::spawn(&[], db_url, listen, env, tweak)
    }

    fn spawn(
        launcher: &[&str],
        db_url: &str,
        listen: &str,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Result<ServerProcess, String> {
        use std::io::{BufRead, BufReader};
        let log_path = std::env::temp_dir().join(format!("vocode-server-{}.log", Uuid::new_v4().simple()));
        let log = std::fs::File::create(&log_path).expect("a log file");
        let bin = env!("CARGO_BIN_EXE_vocode-server");
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut cmd = std::process::Command::new(program);
                cmd.args(args).arg(bin);
                cmd
            }
            None => std::process::Command::new(bin),
        };
        cmd.args(["serve", "--listen", listen])
            .env("DATABASE_URL", db_url)
            .env_remove("VOCODE_API_KEY")
            .env_remove("SECRETS_KEY")
            .env_remove("CARRIER_MODE")
            .stdout(std::process::Stdio::piped())
            .stderr(log);
        // No local speech (the checkout's may be installed), unless the test says otherwise.
        cmd.env("SPEECH_DIR", "target/no-speech");
        // Providers that resolve and cannot be reached, unless the test says otherwise.
        for (k, v) in super::app::unreachable_providers_env() {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut printed = String::new();
        let mut base = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            printed.push_str(&line);
            printed.push('\n');
            if let Some(addr) = line.strip_prefix("vocode-server listening on ") {
                base = addr.to_owned();
                break;
            }
        }
        if base.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("{printed}{logged}"));
        }
        Ok(ServerProcess { child, base, printed, log: log_path })
    }

    /// Everything it has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no chance to finish anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
