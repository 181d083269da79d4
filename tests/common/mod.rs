//! Test harness: `spawn_app()` runs a real server on 127.0.0.1 (port 0) with a temporary data
//! dir, and gives helpers to create instances, mint tokens and call the API.
#![allow(dead_code)]

use hearth::auth::{Audience, PermissionSet};
use hearth::instance::{Domain, NewInstance};
use hearth::{Application, Config};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;

pub struct TestApp {
    pub port: u16,
    pub registry: std::sync::Arc<hearth::instance::Registry>,
    pub client: Client,
    pub dir: tempfile::TempDir,
    handle: actix_web::dev::ServerHandle,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_tests(dir.path());
    tweak(&mut config);
    let app = Application::build(config).await.expect("build app");
    let port = app.port();
    let registry = app.registry();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    let client =
        Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build().expect("client");
    TestApp { port, registry, client, dir, handle }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let h = self.handle.clone();
        drop(h.stop(false));
    }
}

/// An instance of a test app, addressed through its `Host`.
pub struct TestInstance {
    pub domain: String,
    pub port: u16,
    pub client: Client,
}

impl TestApp {
    pub fn add_instance(&self, name: &str, passphrase: &str) -> TestInstance {
        let domain = format!("{name}.localhost:{}", self.port);
        self.registry
            .add(NewInstance {
                domain: Domain::parse(&domain).expect("domain"),
                passphrase: Some(passphrase),
                email: Some(format!("{name}@example.net")),
                public_name: Some(name.to_owned()),
            })
            .expect("add instance");
        TestInstance { domain, port: self.port, client: self.client.clone() }
    }

    pub fn token(&self, inst: &TestInstance, scope: &str) -> String {
        let i = self.registry.get(&Domain::parse(&inst.domain).expect("domain")).expect("registry").expect("instance");
        i.keys.issue(Audience::Cli, "cli", 3600, Some(&PermissionSet::parse(scope).expect("scope")), None)
    }
}

impl TestInstance {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn req(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let mut r = self.client.request(method, self.url(path)).header("Host", &self.domain);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends a request and returns status and JSON body (Null when the body isn't JSON).
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(method, path, token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}
