//! Faults of the embedded (SQLite) mode, against the real binary: the disk fills up under a
//! running server, and a data folder the server may not write. Either way: a clear error, writes
//! refused cleanly, nothing acknowledged lost, and a database that is whole afterwards.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::ServerProcess;

struct Folder(PathBuf);

impl Folder {
    fn new() -> Folder {
        let dir = std::env::temp_dir().join(format!("vocode-embedded-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Folder(dir)
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.join("vocode.db").display())
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = set_mode(&self.0, 0o755);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

async fn create_prompt(client: &reqwest::Client, base: &str, key: &str, content: &str) -> (StatusCode, Value) {
    let res = client
        .post(format!("{base}/v1/prompts/create"))
        .bearer_auth(key)
        .json(&json!({"content": content}))
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

/// `PRAGMA integrity_check` and the prompts, read by a connection of the test's own.
async fn inspect(url: &str) -> (String, Vec<String>) {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT lower(hex(id)) FROM prompts").fetch_all(&pool).await.unwrap_or_default();
    pool.close().await;
    (check, ids)
}

/// Sets the soft file-size limit of a running process (the hard one stays unlimited, so that it
/// can be raised again without privileges).
fn prlimit_fsize(pid: u32, limit: &str) {
    let out = Command::new("prlimit").args(["--pid", &pid.to_string(), &format!("--fsize={limit}:unlimited")]).output();
    let out = out.expect("prlimit (util-linux) runs");
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs the server with SIGXFSZ ignored, so that a write past the file-size limit fails with
/// EFBIG instead of killing the process: the shell ignores it, and an ignored signal stays ignored
/// across `exec`.
const IGNORING_SIGXFSZ: &[&str] = &["sh", "-c", "trap '' XFSZ; exec \"$0\" \"$@\""];

/// The disk fills up under a running server (its file-size limit drops to nothing, so every write
/// that grows a file fails as on a full disk): creates are refused with a 503 whose `detail` says
/// the disk is the trouble, reads keep working, and once there is room again writes succeed
/// without a restart. Every prompt acknowledged before, during and after is there, and the
/// database passes SQLite's integrity check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_cleanly_and_recovers_without_a_restart() {
    let folder = Folder::new();
    let key = vocode_server::crypto::generate_api_key().key;
    let mut server = ServerProcess::start_through(
        IGNORING_SIGXFSZ,
        &folder.url(),
        "127.0.0.1:0",
        &[("VOCODE_API_KEY", &key), ("CARRIER_MODE", "sandbox"), ("RUST_LOG", "error")],
        |cmd| {
            // Logs go to a pipe: a file would be refused writes, too.
            cmd.stderr(std::process::Stdio::inherit());
        },
    );
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (status, prompt) = create_prompt(&client, &base, &key, &format!("before {i}")).await;
        assert_eq!(status, StatusCode::OK, "{prompt}");
        acknowledged.push(prompt["id"].as_str().unwrap().to_owned());
    }

    prlimit_fsize(server.child.id(), "512");
    let mut refused = 0;
    for i in 0..20 {
        // Long enough content that each write must grow the write-ahead log.
        let (status, body) = create_prompt(&client, &base, &key, &format!("during {i} {}", "x".repeat(8000))).await;
        match status {
            StatusCode::OK => acknowledged.push(body["id"].as_str().unwrap().to_owned()),
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                let detail = body["detail"].as_str().unwrap();
                assert!(detail.contains("disk"), "the detail says what is wrong: {detail}");
            }
            other => panic!("a full disk is a 503, not {other}: {body}"),
        }
    }
    assert!(refused >= 15, "writes are refused while the disk is full ({refused} of 20)");
    let res = client.get(format!("{base}/v1/prompts/list?size=100")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "reads keep working");

    prlimit_fsize(server.child.id(), "unlimited");
    for i in 0..5 {
        let (status, prompt) = create_prompt(&client, &base, &key, &format!("after {i}")).await;
        assert_eq!(status, StatusCode::OK, "writes work again without a restart: {prompt}");
        acknowledged.push(prompt["id"].as_str().unwrap().to_owned());
    }
    for id in &acknowledged {
        let res = client.get(format!("{base}/v1/prompts?id={id}")).bearer_auth(&key).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "prompt {id} was acknowledged");
    }
    assert!(server.child.try_wait().unwrap().is_none(), "the server kept running");
    server.kill9();
    let (check, ids) = inspect(&folder.url()).await;
    assert_eq!(check, "ok");
    for id in &acknowledged {
        assert!(ids.contains(&id.replace('-', "")), "prompt {id} is in the database after a kill -9");
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A data folder the server may not write (its owner changed, a read-only volume): the server
/// refuses to start, at once, with one line that names the folder, and the database is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_folder_is_refused_at_start_with_one_clear_line() {
    let folder = Folder::new();
    let key = vocode_server::crypto::generate_api_key().key;
    let env = [("VOCODE_API_KEY", key.as_str()), ("CARRIER_MODE", "sandbox"), ("RUST_LOG", "warn")];
    let mut server = ServerProcess::start(&folder.url(), &env);
    let (status, prompt) = create_prompt(&reqwest::Client::new(), &server.base, &key, "kept").await;
    assert_eq!(status, StatusCode::OK);
    server.kill9();
    // As on a read-only volume, the files stay readable (the secrets key included).
    set_mode(&folder.0.join("secrets.key"), 0o644).unwrap();
    let (_, before) = inspect(&folder.url()).await;

    // Root may write anywhere: the server then runs as `nobody`, for whom the folder is read-only;
    // anyone else loses the write permission.
    let as_root = running_as_root();
    if !as_root {
        set_mode(&folder.0, 0o555).unwrap();
    }
    let refused = ServerProcess::try_start(&folder.url(), "127.0.0.1:0", &env, |cmd| {
        if as_root {
            cmd.uid(65534).gid(65534);
        }
    });
    let printed = match refused {
        Ok(_) => panic!("the server started on a folder it cannot write"),
        Err(printed) => printed,
    };
    let errors: Vec<&str> = printed.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{printed}");
    assert!(
        errors[0].contains("cannot be written") && errors[0].contains(&folder.0.display().to_string()),
        "{printed}"
    );
    assert!(!printed.contains("panicked"), "{printed}");

    set_mode(&folder.0, 0o755).unwrap();
    let (check, after) = inspect(&folder.url()).await;
    assert_eq!(check, "ok");
    assert_eq!(before, after);
    assert!(after.contains(&prompt["id"].as_str().unwrap().replace('-', "")));
}
