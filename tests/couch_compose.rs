//! `docker-compose.yml` can't run here (no Docker engine), so this checks what can be checked
//! without one: it parses, it has a three-node CouchDB 3 cluster with a setup step and two
//! hearth servers on it, the published ports match the addresses hearth listens on, and every
//! `HEARTH_*` variable it sets is a real configuration key (loaded through the same figment
//! path as `hearth serve`, whose `deny_unknown_fields` refuses a misspelt one).

use std::collections::BTreeMap;

use hearth::config::StoreKind;
use hearth::Config;
use serde_yaml::Value;

fn compose() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("docker-compose.yml at the top level");
    let mut v: Value = serde_yaml::from_str(&text).expect("valid YAML");
    v.apply_merge().expect("valid merge keys");
    v
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["services"].get(name).unwrap_or_else(|| panic!("service {name} missing"))
}

fn env(s: &Value) -> BTreeMap<String, String> {
    let map = s["environment"].as_mapping().expect("environment as a map");
    map.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => panic!("quote {k:?}: compose wants strings, got {other:?}"),
            };
            (k.as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// Loads a `Config` from exactly these variables (nothing else of the process environment).
#[allow(clippy::result_large_err)] // figment's Jail closures return its error by value
fn load_config(vars: &BTreeMap<String, String>) -> Config {
    let mut out = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (k, v) in vars {
            jail.set_env(k, v);
        }
        out = Some(Config::load(None).map_err(|e| figment::Error::from(e.to_string()))?);
        Ok(())
    });
    out.expect("loaded")
}

fn published_ports(s: &Value) -> Vec<(String, String)> {
    s["ports"]
        .as_sequence()
        .map(|p| {
            p.iter()
                .map(|p| {
                    let p = p.as_str().expect("ports as strings");
                    let parts: Vec<&str> = p.split(':').collect();
                    assert!(parts.len() >= 2, "{p}: publish as [ip:]host:container");
                    (parts[parts.len() - 2].to_owned(), parts[parts.len() - 1].to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_runs_a_three_node_couchdb_cluster_with_a_setup_step() {
    let c = compose();
    let mut cookies = Vec::new();
    for i in 1..=3 {
        let name = format!("couchdb-{i}");
        let s = service(&c, &name);
        assert!(s["image"].as_str().unwrap().starts_with("couchdb:3"), "{name} runs CouchDB 3");
        let e = env(s);
        for key in ["COUCHDB_USER", "COUCHDB_PASSWORD", "COUCHDB_SECRET", "NODENAME", "ERL_FLAGS"] {
            assert!(e.contains_key(key), "{name} sets {key}");
        }
        assert!(e["ERL_FLAGS"].contains("-setcookie"), "{name} sets the Erlang cookie");
        cookies.push((e["ERL_FLAGS"].clone(), e["COUCHDB_SECRET"].clone(), e["COUCHDB_PASSWORD"].clone()));
        let aliases = &s["networks"]["default"]["aliases"];
        assert!(
            aliases.as_sequence().unwrap().iter().any(|a| a.as_str() == Some(e["NODENAME"].as_str())),
            "{name}'s node name resolves on the network"
        );
    }
    assert!(cookies.windows(2).all(|w| w[0] == w[1]), "one cookie, secret and password for the cluster");
    let setup = service(&c, "couchdb-setup");
    let script = setup["command"][0].as_str().unwrap();
    for step in ["enable_cluster", "add_node", "finish_cluster", "_cluster_setup"] {
        assert!(script.contains(step), "the setup step calls {step}");
    }
    for i in 1..=3 {
        assert!(script.contains(&format!("couchdb-{i}.cluster")), "the setup step waits for node {i}");
    }
    assert!(!script.contains("${"), "compose would interpolate ${{…}}: escape as $$");
}

#[test]
fn compose_runs_two_hearth_servers_on_the_cluster_with_real_config_keys() {
    let c = compose();
    let couch_password = env(service(&c, "couchdb-1"))["COUCHDB_PASSWORD"].clone();
    let mut ports = Vec::new();
    for name in ["hearth-alice", "hearth-bob"] {
        let s = service(&c, name);
        assert!(s.get("build").is_some(), "{name} is built from the Dockerfile");
        assert_eq!(
            s["depends_on"]["couchdb-setup"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name} waits for the cluster"
        );
        let vars: BTreeMap<String, String> = env(s).into_iter().filter(|(k, _)| k.starts_with("HEARTH_")).collect();
        let config = load_config(&vars);
        assert_eq!(config.store, StoreKind::Couchdb, "{name}");
        let url = config.couchdb.url.clone().expect("a CouchDB URL");
        let host = url.trim_start_matches("http://").split(':').next().unwrap().to_owned();
        let node = host.trim_end_matches(".cluster");
        assert!(c["services"].get(node).is_some(), "{name} talks to a node of the cluster, not {url}");
        assert_eq!(config.couchdb.user.as_deref(), Some("admin"));
        use secrecy::ExposeSecret;
        assert_eq!(
            config.couchdb.password.as_ref().map(|p| p.expose_secret().to_owned()),
            Some(couch_password.clone())
        );
        assert!(config.federation.allow_http && config.federation.allow_private_addresses);
        // The instance domains carry the port, so it must be the same inside and outside.
        let listen_port = config.listen.rsplit(':').next().unwrap().to_owned();
        let published = published_ports(s);
        assert!(published.iter().any(|(h, c)| *h == listen_port && *c == listen_port), "{name}: {published:?}");
        ports.push(listen_port);
    }
    assert_ne!(ports[0], ports[1]);
    let doc =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml")).unwrap();
    assert!(doc.contains("The two-instance demo"), "the file explains how to run the demo");
    // A misspelt key is refused, so the check above means something.
    let mut bad = BTreeMap::new();
    bad.insert("HEARTH_COUCHDB__URI".to_owned(), "http://x".to_owned());
    let refused = std::panic::catch_unwind(|| load_config(&bad));
    assert!(refused.is_err(), "an unknown HEARTH_ variable must be refused");
}
