//! What can be checked of the deployment without a Docker engine or a cluster — the compose file,
//! the proxy's configuration, the Kubernetes manifests and the facts that hold across them (each
//! manifest's schema is checked by scripts/test with kubernetes-validate) — and the interactive
//! docs in a real (headless) browser.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::browser::{require_chromium, OFFLINE};
use crate::support::{Backend, TestApp, OPENAPI_YAML};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn server_variables() -> BTreeSet<String> {
    vocode_server::config::env_names().into_iter().collect()
}

/// Variables of the compose file itself (interpolated into it, not passed to the server):
/// Postgres's password, the published port, Docker's wait before SIGKILL, the image's build
/// argument.
const COMPOSE_ONLY: &[&str] = &["POSTGRES_PASSWORD", "VOCODE_PORT", "STOP_GRACE_PERIOD", "LOCAL_SPEECH"];

/// `${NAME:-default}` → `default`.
fn interpolated_default(value: &str) -> &str {
    let inner = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')).unwrap_or(value);
    inner.split_once(":-").map_or(inner, |(_, default)| default)
}

/// A duration as Compose writes it (`330s`, `5m30s`, `1h`): seconds.
fn compose_seconds(text: &str) -> u64 {
    let (mut total, mut number) = (0, String::new());
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: u64 = number.parse().unwrap_or_else(|_| panic!("a duration: {text}"));
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                number.clear();
            }
            _ => panic!("a duration: {text}"),
        }
    }
    assert!(number.is_empty(), "a duration with its unit: {text}");
    total
}

/// How long a server stops for by default: the drain, then the grace for what is in flight.
fn default_stop_secs(drain_secs: u64) -> u64 {
    drain_secs + vocode_server::config::ServeArgs::default().shutdown_grace_secs
}

#[test]
fn the_compose_file_passes_only_the_servers_variables() {
    let compose: Value = serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    let server = &compose["services"]["vocode-server"];
    let env = server["environment"].as_object().expect("an environment map");
    let known = server_variables();
    for name in env.keys() {
        assert!(known.contains(name), "docker-compose.yml passes {name}, which the server does not read");
    }
    for required in ["DATABASE_URL", "SECRETS_KEY", "LISTEN_ADDR"] {
        assert!(env.contains_key(required), "{required}");
    }
    // The server starts once Postgres is healthy, and Postgres keeps its data in a volume.
    assert_eq!(server["depends_on"]["postgres"]["condition"], "service_healthy");
    let postgres = &compose["services"]["postgres"];
    assert!(postgres["healthcheck"]["test"].is_array());
    assert!(postgres["volumes"][0].as_str().unwrap().starts_with("postgres-data:"));
    assert!(compose["volumes"].get("postgres-data").is_some());
    // The listen address and the image's port agree.
    let listen_port = env["LISTEN_ADDR"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains(&format!("EXPOSE {listen_port}")));
    assert!(dockerfile.contains(&format!("ENV LISTEN_ADDR=0.0.0.0:{listen_port}")));
    assert!(env["DATABASE_URL"].as_str().unwrap().starts_with("postgres://vocode:${POSTGRES_PASSWORD}@postgres:5432/"));
}

#[test]
fn the_env_example_names_only_real_settings() {
    let known = server_variables();
    let compose = read("docker-compose.yml");
    let names: Vec<String> = read(".env.example")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().trim().to_owned())
        .collect();
    assert!(names.len() > 10);
    for name in &names {
        if COMPOSE_ONLY.contains(&name.as_str()) {
            assert!(compose.contains(&format!("${{{name}")), "{name} is used by the compose file");
        } else {
            assert!(known.contains(name), ".env.example names {name}, which the server does not read");
            assert!(compose.contains(&format!("${{{name}")), "{name} reaches the server through the compose file");
        }
    }
}

/// The proxy's configuration as the compose file runs it: `(section header, its lines)`.
fn haproxy_sections() -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in read("deploy/haproxy/haproxy.cfg").lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            sections.last_mut().expect("a section").1.push(trimmed.to_owned());
        } else {
            sections.push((trimmed.to_owned(), Vec::new()));
        }
    }
    sections
}

fn haproxy_section(name: &str) -> Vec<String> {
    haproxy_sections().into_iter().find(|(header, _)| header == name).unwrap_or_else(|| panic!("{name}")).1
}

/// `docker compose up -d --scale vocode-server=3`: replicas with no port or name of their own
/// behind the proxy, which publishes the port, finds every replica by Docker's DNS, checks them
/// on `/ready`, round-robins HTTP and websockets, and lets a media stream live an hour; Docker
/// waits for the drain before it kills a replica.
#[test]
fn the_compose_file_runs_replicas_behind_a_round_robin_proxy() {
    let compose: Value = serde_norway::from_str(&read("docker-compose.yml")).unwrap();
    let server = &compose["services"]["vocode-server"];
    assert!(server.get("ports").is_none(), "a scaled service publishes no port of its own");
    assert!(server.get("container_name").is_none(), "a scaled service has no fixed name");
    let env = &server["environment"];
    let listen_port = env["LISTEN_ADDR"].as_str().unwrap().rsplit(':').next().unwrap();
    assert_eq!(server["expose"][0].as_str(), Some(listen_port));
    assert!(server["deploy"]["replicas"].as_u64().unwrap() >= 2);

    // Docker's wait before SIGKILL holds the whole drain and the grace after it.
    let stop = compose_seconds(interpolated_default(server["stop_grace_period"].as_str().unwrap()));
    let drain: u64 = interpolated_default(env["DRAIN_SECS"].as_str().unwrap()).parse().unwrap();
    let grace: u64 = interpolated_default(env["SHUTDOWN_GRACE_SECS"].as_str().unwrap()).parse().unwrap();
    assert_eq!(grace, vocode_server::config::ServeArgs::default().shutdown_grace_secs);
    assert!(stop > default_stop_secs(drain), "stop_grace_period {stop} s ≤ DRAIN_SECS {drain} s + {grace} s");
    let example = read(".env.example");
    let example_value = |name: &str| {
        let prefix = format!("{name}=");
        example.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::to_owned).unwrap_or_default()
    };
    assert_eq!(example_value("DRAIN_SECS"), drain.to_string(), ".env.example says the compose file's default");
    assert_eq!(compose_seconds(&example_value("STOP_GRACE_PERIOD")), stop);

    // The proxy publishes the port and runs deploy/haproxy/haproxy.cfg.
    let proxy = &compose["services"]["proxy"];
    assert!(proxy["image"].as_str().unwrap().starts_with("haproxy:"));
    assert_eq!(proxy["ports"][0].as_str(), Some("${VOCODE_PORT:-3000}:3000"));
    let mounted = proxy["volumes"][0].as_str().unwrap();
    assert!(mounted.starts_with("./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg"), "{mounted}");
    assert!(haproxy_section("frontend vocode").contains(&"bind :3000".to_owned()));
    let backend = haproxy_section("backend vocode-server");
    for line in ["balance roundrobin", "option httpchk GET /ready", "http-check expect status 200"] {
        assert!(backend.contains(&line.to_owned()), "the backend has `{line}`: {backend:?}");
    }
    let template = backend.iter().find(|l| l.starts_with("server-template ")).expect("replicas found by name");
    assert!(template.contains(&format!(" vocode-server:{listen_port} ")) && template.contains("resolvers docker"));
    let defaults = haproxy_section("defaults");
    assert!(defaults.contains(&"mode http".to_owned()), "HTTP mode: a request's replica is chosen per request");
    let timeout = |name: &str| {
        let line = defaults.iter().find(|l| l.starts_with(&format!("timeout {name} "))).expect(name);
        compose_seconds(line.rsplit(' ').next().unwrap())
    };
    assert!(timeout("tunnel") >= 3600, "an idle media stream lives an hour");
    assert!(timeout("server") > vocode_server::config::ServeArgs::default().request_timeout_secs);
    assert!(read("README.md").contains("docker compose up -d --scale vocode-server=3"), "README.md shows it");
}

/// What the schemas cannot tell of `deploy/kubernetes/`: the pieces name each other, the probes
/// are the server's, the pod outlives its drain, a disruption leaves two replicas serving, and
/// every setting is one the server reads.
#[test]
fn the_kubernetes_manifests_drain_before_the_pod_is_killed() {
    let dir = format!("{}/deploy/kubernetes", env!("CARGO_MANIFEST_DIR"));
    let mut by_kind: std::collections::BTreeMap<String, Value> = Default::default();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(path.extension().and_then(|e| e.to_str()), Some("yaml"), "{path:?}");
        let doc: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let kind = doc["kind"].as_str().unwrap().to_owned();
        assert!(by_kind.insert(kind.clone(), doc).is_none(), "one {kind}");
    }
    let [namespace, deployment, config, secret, service, budget] =
        ["Namespace", "Deployment", "ConfigMap", "Secret", "Service", "PodDisruptionBudget"]
            .map(|k| by_kind.get(k).unwrap_or_else(|| panic!("a {k}")).clone());
    for doc in by_kind.values().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(doc["metadata"]["namespace"], namespace["metadata"]["name"], "{}", doc["kind"]);
    }
    let known = server_variables();
    let settings: Vec<(&String, &Value)> =
        config["data"].as_object().unwrap().iter().chain(secret["stringData"].as_object().unwrap()).collect();
    for (name, _) in &settings {
        assert!(known.contains(*name), "deploy/kubernetes sets {name}, which the server does not read");
    }
    for name in ["DATABASE_URL", "SECRETS_KEY", "VOCODE_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(secret["stringData"].get(name).is_some(), "the Secret holds {name}");
        assert!(config["data"].get(name).is_none(), "{name} is a secret, not in the ConfigMap");
    }

    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1);
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let sources: Vec<&Value> = container["envFrom"].as_array().unwrap().iter().collect();
    assert!(sources.iter().any(|s| s["configMapRef"]["name"] == config["metadata"]["name"]));
    assert!(sources.iter().any(|s| s["secretRef"]["name"] == secret["metadata"]["name"]));

    // The probes: ready on /ready (503 while draining), alive on /health, on the port it listens on.
    let listen_port: u64 = config["data"]["LISTEN_ADDR"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    let port = &container["ports"][0];
    assert_eq!(port["containerPort"], listen_port);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], port["name"], "{probe}");
    }
    assert_eq!(&service["spec"]["ports"][0]["targetPort"], &port["name"]);

    // The kubelet waits for the preStop pause, the whole drain and the grace after it.
    let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"].as_array().unwrap();
    assert_eq!(pre_stop[0], "sleep", "a pause, not a command that stops the server early");
    let pause: u64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    let setting = |name: &str| -> u64 { config["data"][name].as_str().unwrap().parse().unwrap() };
    let (drain, grace) = (setting("DRAIN_SECS"), setting("SHUTDOWN_GRACE_SECS"));
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(termination > pause + drain + grace, "{termination} s ≤ {pause} + {drain} + {grace} s");

    // A voluntary disruption leaves at least two of the three serving.
    let replicas = spec["replicas"].as_u64().unwrap();
    let down = match (budget["spec"]["maxUnavailable"].as_u64(), budget["spec"]["minAvailable"].as_u64()) {
        (Some(max_unavailable), None) => max_unavailable,
        (None, Some(min_available)) => replicas - min_available,
        other => panic!("one of maxUnavailable and minAvailable, as a number: {other:?}"),
    };
    assert!(replicas - down >= 2, "{down} of {replicas} may be down at once");

    // The image's unprivileged user, with nothing to escalate to.
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains(&format!("--uid {} ", pod["securityContext"]["runAsUser"])), "the image's user");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(read("README.md").contains("kubectl apply -f deploy/kubernetes/"), "README.md shows it");
}

#[test]
fn the_dockerfile_builds_what_the_readme_says_and_runs_unprivileged() {
    let dockerfile = read("Dockerfile");
    let readme = read("README.md");
    let build = dockerfile.lines().find(|l| l.starts_with("RUN cargo build")).expect("a cargo build step");
    let command = build.trim_start_matches("RUN ").trim();
    assert!(readme.contains(command), "README.md shows the image's build command: {command}");
    assert!(readme.contains("docker compose up"), "README.md shows how to start it");
    let user = dockerfile.lines().rfind(|l| l.starts_with("USER ")).expect("a USER");
    assert_ne!(user.trim(), "USER root");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"vocode-server\", \"healthcheck\""));
    assert!(dockerfile.lines().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage");
    // With LOCAL_SPEECH=1 the speech stage runs the install command into the folder the image
    // copies, which is the server's SPEECH_DIR.
    let copied = dockerfile.lines().find(|l| l.starts_with("COPY --from=speech ")).expect("the speech stage's files");
    let speech_dir = copied.split_whitespace().last().unwrap();
    assert!(dockerfile.contains(&format!("ENV SPEECH_DIR={speech_dir}")), "{speech_dir}");
    assert!(dockerfile.contains(&format!("SPEECH_DIR={speech_dir} ")) && dockerfile.contains("scripts/install-speech"));
    assert!(readme.contains("LOCAL_SPEECH=1"), "README.md shows how to build the image with the local speech");
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            let path = format!("{}/{source}", env!("CARGO_MANIFEST_DIR"));
            assert!(std::path::Path::new(&path).exists(), "the Dockerfile copies {source}, which does not exist");
        }
    }
}

#[tokio::test]
async fn the_healthcheck_command_knows_a_live_server_from_a_dead_one() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    let bin = env!("CARGO_BIN_EXE_vocode-server");
    let run = |url: String| async move {
        tokio::process::Command::new(bin).args(["healthcheck", "--url", &url]).output().await.unwrap()
    };
    assert!(run(format!("{}/health", app.base)).await.status.success());
    let dead = run("http://127.0.0.1:9/health".into()).await;
    assert!(!dead.status.success());
    assert_eq!(String::from_utf8_lossy(&dead.stderr).trim().lines().count(), 1);
}

#[tokio::test]
async fn the_docs_render_every_operation_in_a_browser_with_no_internet() {
    let Some(browser) = require_chromium("the docs page") else { return };
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    let profile = std::env::temp_dir().join(format!("vocode-chromium-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("{}/docs", app.base);
    let out = tokio::process::Command::new(browser)
        // Nothing but this server may be reached: the page must need no internet.
        .args(OFFLINE)
        .args(["--virtual-time-budget=20000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .output()
        .await
        .expect("Chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    let spec: Value = serde_norway::from_str(OPENAPI_YAML).unwrap();
    let mut missing = Vec::new();
    let mut rendered = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            rendered += 1;
            let shown = dom.contains(&format!("data-path=\"{path}\"")) && dom.contains(&format!("opblock-{method}"));
            if !shown {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "not rendered: {missing:?} (of {rendered}); the page: {}", &dom[..dom.len().min(2000)]);
    assert!(dom.contains("Vocode API (vocode-server)"), "the document's title is shown");
}
