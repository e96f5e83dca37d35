//! compose.yml, Dockerfile.node, Dockerfile.proxy and deploy/compose-proxy.toml checked
//! against each other and against the real binaries (no Docker engine needed): the flags and
//! environment variables they use are ones `chat-node --help` and `proxy --help` list, the
//! proxy's config passes `proxy check`, its backends are the nodes' service names and listen
//! ports, the published ports are 80 and 443, every dependency is health-gated, and the images
//! run the binaries they build as a non-root user with a health check.
//!
//! Build first: `cargo build -p proxy -p chat-node --bins`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tests::bin_path;
use yaml_rust2::{Yaml, YamlLoader};

const NODES: [&str; 3] = ["node1", "node2", "node3"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn compose() -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read("compose.yml")).expect("compose.yml is YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(!s.is_badvalue(), "compose.yml has no service {name}");
    s
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

/// `<bin> --help` (long help: it lists the environment variables).
fn help(bin: &str) -> String {
    let out = Command::new(bin_path(bin))
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {bin} --help: {e}"));
    assert!(out.status.success(), "{bin} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `[env: NAME=]` variables a clap help text lists (`[env: NAME]` where the value is
/// hidden).
fn help_env(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

/// The `--flag`s a clap help text lists.
fn help_flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split(['=', '<']).next().unwrap_or(w).to_owned())
        .collect()
}

/// A Dockerfile as `(INSTRUCTION, arguments)`, continuation lines joined, comments dropped.
fn dockerfile(rel: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(rel).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (ins, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((ins.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn instructions<'a>(file: &'a [(String, String)], ins: &str) -> Vec<&'a str> {
    file.iter()
        .filter(|(i, _)| i == ins)
        .map(|(_, a)| a.as_str())
        .collect()
}

/// A JSON-array instruction (`["a", "b"]`) as words.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{args:?} is not an exec form: {e}"))
}

/// The port of the first `http://127.0.0.1:<port>/…` in `text`.
fn local_url_port(text: &str) -> u16 {
    let rest = text
        .split("http://127.0.0.1:")
        .nth(1)
        .unwrap_or_else(|| panic!("no http://127.0.0.1:<port> in {text:?}"));
    rest.split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {text:?}"))
}

/// Checks what both images share and returns `(binary, EXPOSE ports, HEALTHCHECK port)`.
fn check_image(rel: &str) -> (String, BTreeSet<u16>, u16, Vec<(String, String)>) {
    let file = dockerfile(rel);
    let from = instructions(&file, "FROM");
    assert_eq!(from.len(), 2, "{rel}: a build stage and a run stage");
    assert!(
        from[0].starts_with("rust:1-bookworm") && from[0].ends_with(" AS build"),
        "{rel}: build stage {:?}",
        from[0]
    );
    assert_eq!(from[1], "debian:bookworm-slim", "{rel}: run stage");

    let run = instructions(&file, "RUN").join("\n");
    let bin = run
        .split("cargo build --release --locked --bin ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{rel}: no `cargo build --release --locked --bin <name>`"))
        .to_owned();
    // A real binary of the workspace (built by the test command).
    bin_path(&bin);
    let copy = instructions(&file, "COPY");
    assert!(
        copy.iter().any(|c| c.starts_with(&format!(
            "--from=build /src/target/release/{bin} /usr/local/bin/{bin}"
        ))),
        "{rel}: the run stage gets the built {bin}: {copy:?}"
    );
    assert_eq!(
        exec_form(instructions(&file, "ENTRYPOINT")[0]),
        std::slice::from_ref(&bin),
        "{rel}: runs {bin}"
    );

    let user = instructions(&file, "USER");
    assert_eq!(user.len(), 1, "{rel}: one USER");
    assert!(
        !matches!(user[0], "root" | "0" | "0:0"),
        "{rel}: runs as root"
    );
    assert!(
        run.contains("useradd --system --uid 10001") && run.contains(user[0]),
        "{rel}: the user {} is created",
        user[0]
    );

    let expose: BTreeSet<u16> = instructions(&file, "EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.parse().unwrap_or_else(|_| panic!("{rel}: EXPOSE {p}")))
        .collect();
    let health = instructions(&file, "HEALTHCHECK");
    assert_eq!(health.len(), 1, "{rel}: one HEALTHCHECK");
    assert!(health[0].contains("CMD curl -fsS"), "{rel}: {}", health[0]);
    // The slim image has no curl of its own.
    assert!(
        run.contains("--no-install-recommends curl"),
        "{rel}: curl is installed for the health check"
    );
    let health_port = local_url_port(health[0]);
    assert!(
        expose.contains(&health_port),
        "{rel}: checks port {health_port}, exposes {expose:?}"
    );
    (bin, expose, health_port, file)
}

/// A mapping's entries, keys as strings, values converted by `value`.
fn mapping<T>(y: &Yaml, what: &str, value: impl Fn(&Yaml) -> T) -> BTreeMap<String, T> {
    y.as_hash()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {y:?}"))
        .iter()
        .map(|(k, v)| (str_of(k, what).to_owned(), value(v)))
        .collect()
}

/// A sequence of strings.
fn words<'a>(y: &'a Yaml, what: &str) -> Vec<&'a str> {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what} is not a list: {y:?}"))
        .iter()
        .map(|w| str_of(w, what))
        .collect()
}

/// `KEY: value` pairs of a service's `environment` mapping.
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    mapping(&service["environment"], "environment", |v| match v {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        other => panic!("environment value {other:?}"),
    })
}

/// Whether a service joins the `switchyard` network, on which compose's DNS resolves the
/// other services' names.
fn on_switchyard(service: &Yaml) -> bool {
    service["networks"]
        .as_vec()
        .is_some_and(|n| n.iter().any(|n| n.as_str() == Some("switchyard")))
}

/// The services a service waits for, with their conditions.
fn depends_on(service: &Yaml) -> BTreeMap<String, String> {
    mapping(&service["depends_on"], "depends_on", |v| {
        str_of(&v["condition"], "condition").to_owned()
    })
}

/// The compose proxy config as TOML.
fn proxy_toml() -> toml::Table {
    read("deploy/compose-proxy.toml")
        .parse()
        .expect("deploy/compose-proxy.toml is TOML")
}

#[test]
fn the_services_are_redis_three_nodes_and_the_proxy_on_one_network() {
    let compose = compose();
    let names: BTreeSet<&str> = compose["services"]
        .as_hash()
        .expect("services")
        .keys()
        .map(|k| str_of(k, "a service name"))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["redis", "node1", "node2", "node3", "proxy"])
    );
    // A user-defined network: compose's DNS resolves service names on it, which the
    // proxy's backends (node1:9000, ...) and the nodes' Redis URL rely on.
    assert!(
        compose["networks"]["switchyard"].as_hash().is_some(),
        "a `switchyard` network is defined"
    );
    for name in names {
        assert!(
            on_switchyard(service(&compose, name)),
            "{name} is not on the switchyard network"
        );
    }
}

#[test]
fn nodes_use_real_chat_node_settings_and_match_the_proxy_backends() {
    let compose = compose();
    let help = help("chat-node");
    let known_env = help_env(&help);
    assert!(known_env.contains("CHAT_LISTEN"), "{known_env:?}");
    let (bin, expose, health_port, file) = check_image("Dockerfile.node");
    assert_eq!(bin, "chat-node");
    // The image's own default listen address is the one it exposes and checks.
    let image_listen: SocketAddr = instructions(&file, "ENV")
        .iter()
        .find_map(|e| e.strip_prefix("CHAT_LISTEN="))
        .expect("Dockerfile.node sets CHAT_LISTEN")
        .parse()
        .expect("CHAT_LISTEN is ip:port");
    assert_eq!(expose, BTreeSet::from([image_listen.port()]));
    assert_eq!(health_port, image_listen.port());

    let toml = proxy_toml();
    // Each backend is a node by its service name: `node1:9000`.
    let backends: BTreeMap<String, (String, u16)> = toml["upstreams"]["chat"]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["id"].as_str().expect("id").to_owned(),
                b["addr"]
                    .as_str()
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
                    .expect("addr is host:port"),
            )
        })
        .collect();
    assert_eq!(
        backends.keys().map(String::as_str).collect::<Vec<_>>(),
        NODES
    );

    for name in NODES {
        let node = service(&compose, name);
        assert_eq!(
            str_of(&node["build"]["dockerfile"], "build.dockerfile"),
            "Dockerfile.node"
        );
        assert!(node["command"].is_badvalue(), "{name}: configured by env");
        let env = environment(node);
        for key in env.keys() {
            assert!(
                known_env.contains(key),
                "{name}: {key} is not a chat-node variable ({known_env:?})"
            );
        }
        assert_eq!(env["CHAT_NODE_ID"], name);
        let listen: SocketAddr = env["CHAT_LISTEN"].parse().expect("CHAT_LISTEN is ip:port");
        assert!(
            listen.ip().is_unspecified(),
            "{name}: reachable from the proxy"
        );
        assert_eq!(
            listen.port(),
            image_listen.port(),
            "{name}: the checked port"
        );
        assert_eq!(
            backends[name],
            (name.to_owned(), listen.port()),
            "{name}: the proxy's backend address is the service's name and port"
        );
        let redis = env["CHAT_REDIS_URL"]
            .strip_prefix("redis://")
            .expect("a redis:// URL");
        assert!(
            redis == "redis:6379",
            "{name}: CHAT_REDIS_URL {redis} is not the redis service"
        );
        let sessions = &env["CHAT_SESSIONS"];
        assert!(
            help.contains(&format!("- {sessions}:")),
            "{name}: CHAT_SESSIONS={sessions} is not a value chat-node accepts"
        );
        assert_eq!(
            depends_on(node),
            BTreeMap::from([("redis".to_owned(), "service_healthy".to_owned())])
        );
    }
}

#[test]
fn the_proxy_publishes_80_and_443_and_its_config_passes_proxy_check() {
    let compose = compose();
    let proxy = service(&compose, "proxy");
    assert_eq!(
        str_of(&proxy["build"]["dockerfile"], "build.dockerfile"),
        "Dockerfile.proxy"
    );
    let (bin, expose, health_port, file) = check_image("Dockerfile.proxy");
    assert_eq!(bin, "proxy");
    assert!(
        instructions(&file, "RUN")
            .iter()
            .any(|r| r.contains("install -y --no-install-recommends cmake")),
        "pingora's zlib-ng needs cmake in the build stage"
    );
    let cmd = exec_form(instructions(&file, "CMD")[0]);
    let flags = help_flags(&help("proxy"));
    for word in cmd.iter().filter(|w| w.starts_with("--")) {
        assert!(
            flags.contains(word),
            "CMD flag {word} not in `proxy --help`"
        );
    }
    let config_path = cmd
        .iter()
        .skip_while(|w| *w != "--config")
        .nth(1)
        .expect("CMD names --config <file>")
        .clone();
    assert!(
        instructions(&file, "COPY")
            .contains(&format!("deploy/compose-proxy.toml {config_path}").as_str()),
        "the image carries the compose config at {config_path}"
    );

    let toml = proxy_toml();
    let admin: SocketAddr = toml["admin"]["listen"]
        .as_str()
        .expect("admin.listen")
        .parse()
        .expect("ip:port");
    let listeners = toml["listeners"].as_array().expect("listeners");
    let tls = listeners
        .iter()
        .find(|l| l.get("tls").is_some())
        .expect("a TLS listener");
    let plain = listeners
        .iter()
        .find(|l| l.get("tls").is_none())
        .expect("a plain listener");
    let port_of = |l: &toml::Value| -> u16 {
        l["listen"]
            .as_str()
            .and_then(|s| s.parse::<SocketAddr>().ok())
            .map(|a| a.port())
            .expect("listen is ip:port")
    };
    let (tls_port, plain_port) = (port_of(tls), port_of(plain));
    assert_eq!(expose, BTreeSet::from([plain_port, tls_port, admin.port()]));
    assert_eq!(
        health_port,
        admin.port(),
        "the health check asks the admin API"
    );

    // Published: host 80 → the plain listener, 443 → TLS; the redirect names the host's 443.
    let ports: BTreeMap<u16, u16> = words(&proxy["ports"], "ports")
        .into_iter()
        .map(|p| {
            let parts: Vec<&str> = p.split(':').collect();
            let n = parts.len();
            assert!(n >= 2, "{parts:?}: host and container port");
            (
                parts[n - 2].parse().expect("host port"),
                parts[n - 1].parse().expect("container port"),
            )
        })
        .collect();
    assert_eq!(ports.get(&80), Some(&plain_port));
    assert_eq!(ports.get(&443), Some(&tls_port));
    assert_eq!(ports.get(&admin.port()), Some(&admin.port()));
    assert_eq!(plain["redirect_https_port"].as_integer(), Some(443));

    // certs/ mounted read-only where the TLS listener reads it; the config mounted over the
    // image's copy.
    let volumes = words(&proxy["volumes"], "volumes");
    let cert = tls["tls"]["cert"].as_str().expect("tls.cert");
    let key = tls["tls"]["key"].as_str().expect("tls.key");
    let certs_dir = Path::new(cert).parent().expect("cert dir");
    assert_eq!(Path::new(key).parent(), Some(certs_dir));
    assert!(
        volumes.contains(&format!("./certs:{}:ro", certs_dir.display()).as_str()),
        "{volumes:?}"
    );
    assert!(
        volumes.contains(&format!("./deploy/compose-proxy.toml:{config_path}:ro").as_str()),
        "{volumes:?}"
    );
    let env = environment(proxy);
    assert_eq!(
        toml["admin"]["token_env"].as_str(),
        Some("SWITCHYARD_ADMIN_TOKEN")
    );
    assert!(env.contains_key("SWITCHYARD_ADMIN_TOKEN"));

    let deps = depends_on(proxy);
    assert_eq!(
        deps.keys().map(String::as_str).collect::<Vec<_>>(),
        NODES,
        "the proxy waits for every node"
    );
    assert!(deps.values().all(|c| c == "service_healthy"), "{deps:?}");

    // The real proxy accepts the file, with the certificate paths pointed at a fresh
    // dev certificate (the container's /certs does not exist here).
    let dir = tempfile::tempdir().expect("temp dir");
    let gen = tests::Proxy::gen_cert(dir.path());
    assert_eq!(gen.code(), Some(0), "{}", gen.output());
    // The node names resolve only on compose's network: here, each stands for a loopback
    // address (node1 → 127.0.0.1, ...), so that the rest of the file is checked as written.
    let mut local = read("deploy/compose-proxy.toml").replace(
        &format!("{}/", certs_dir.display()),
        &format!("{}/", dir.path().display()),
    );
    for (i, node) in NODES.iter().enumerate() {
        let named = format!("addr = \"{node}:");
        assert!(local.contains(&named), "the proxy's backends name {node}");
        local = local.replace(&named, &format!("addr = \"127.0.0.{}:", i + 1));
    }
    let check = tests::Proxy::check(&local);
    assert_eq!(check.code(), Some(0), "proxy check:\n{}", check.output());
}

#[test]
fn redis_is_health_checked_and_every_dependency_waits_for_health() {
    let compose = compose();
    let redis = service(&compose, "redis");
    assert_eq!(
        words(&redis["healthcheck"]["test"], "redis healthcheck.test"),
        ["CMD", "redis-cli", "ping"]
    );
    assert_eq!(
        words(&redis["command"], "redis command").first(),
        Some(&"redis-server")
    );

    // A dependency can only become healthy if it has a health check: in compose.yml, or in
    // the Dockerfile it is built from.
    let services = compose["services"].as_hash().expect("services");
    for (name, svc) in services {
        let Some(deps) = svc["depends_on"].as_hash() else {
            continue;
        };
        for (dep, cond) in deps {
            let dep = str_of(dep, "a dependency");
            assert_eq!(
                str_of(&cond["condition"], "condition"),
                "service_healthy",
                "{name:?} → {dep}"
            );
            let target = service(&compose, dep);
            let checked = !target["healthcheck"].is_badvalue()
                || target["build"]["dockerfile"]
                    .as_str()
                    .is_some_and(|f| !instructions(&dockerfile(f), "HEALTHCHECK").is_empty());
            assert!(checked, "{dep} has no health check to wait for");
        }
    }
}

#[test]
fn the_build_context_leaves_out_build_output_and_keys() {
    let ignore = read(".dockerignore");
    let entries: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target", "certs", ".git"] {
        assert!(entries.contains(needed), ".dockerignore lacks {needed}");
    }
    // What the builds copy must not be ignored.
    for kept in ["Cargo.lock", "deploy", "chat-node", "proxy"] {
        assert!(!entries.contains(kept), ".dockerignore drops {kept}");
    }
}
