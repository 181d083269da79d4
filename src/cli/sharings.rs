//! `hearth sharings ...`: an instance's sharings, read from its store; the replication state
//! and `sync`, asked of the running server (which runs the replication workers).

use std::sync::Arc;

use anyhow::Context;
use hearth::auth::{Audience, PermissionSet};
use hearth::instance::{Domain, Instance};
use hearth::sharing::{self, service, SharingId};
use hearth::Core;

use super::SharingsCmd;

pub(super) async fn run(core: Core, cmd: SharingsCmd) -> anyhow::Result<()> {
    // Changes made here (a revocation) are written to the store with their outbox entries;
    // the running server's workers deliver them at their next sweep.
    let (registry, cx) = (core.registry.clone(), core.sharing.clone());
    let open = |d: &str| -> anyhow::Result<Arc<Instance>> {
        let d = Domain::parse(d).map_err(anyhow::Error::msg)?;
        registry.get(&d)?.with_context(|| format!("no instance {d}"))
    };
    let sid = |s: &str| SharingId::parse(s).map_err(anyhow::Error::msg);
    match cmd {
        SharingsCmd::Ls { domain, json } => {
            let inst = open(&domain)?;
            let list = sharing::list(inst.store.as_ref()).await?;
            if json {
                let v: Vec<_> = list.iter().map(|s| s.to_api()).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if list.is_empty() {
                println!("No sharing on {domain}");
            } else {
                println!("{:<32}  {:<9} {:<7} {:<8} DESCRIPTION", "ID", "DIRECTION", "ACTIVE", "MEMBERS");
                for s in list {
                    let dir = if s.owner { "outgoing" } else { "incoming" };
                    println!("{:<32}  {:<9} {:<7} {:<8} {}", s.id(), dir, s.active, s.members.len() - 1, s.description);
                }
            }
        }
        SharingsCmd::Show { domain, id, json } => {
            let inst = open(&domain)?;
            let s = sharing::load(inst.store.as_ref(), &sid(&id)?).await?.context("no such sharing")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s.to_api())?);
            } else {
                println!(
                    "Sharing {} ({}, {})",
                    s.id(),
                    if s.owner { "outgoing" } else { "incoming" },
                    if s.active { "active" } else { "inactive" }
                );
                println!("Description: {}", s.description);
                println!("Rules:");
                for r in &s.rules {
                    println!(
                        "  {:<20} {:<24} add={:?} update={:?} remove={:?} values={}",
                        r.title,
                        r.doctype,
                        r.add,
                        r.update,
                        r.remove,
                        r.values.join(",")
                    );
                }
                println!("Members:");
                for (i, m) in s.members.iter().enumerate() {
                    let who = m.public_name.as_deref().or(m.name.as_deref()).or(m.email.as_deref()).unwrap_or("-");
                    println!(
                        "  {i:<3} {:<14} {:<24} {}{}",
                        m.status.as_str(),
                        who,
                        m.instance.as_deref().unwrap_or("-"),
                        if m.read_only { " (read-only)" } else { "" }
                    );
                }
            }
        }
        SharingsCmd::Invitations { domain, id } => {
            let inst = open(&domain)?;
            let s = sharing::load(inst.store.as_ref(), &sid(&id)?).await?.context("no such sharing")?;
            if !s.owner {
                anyhow::bail!("this instance is not the owner of the sharing");
            }
            let list = service::invitations(&cx, &inst, &s);
            if list.is_empty() {
                println!("No invitation waiting for an answer");
            }
            for (i, m, link) in list {
                println!("{i}  {}  {link}", m.email.as_deref().or(m.name.as_deref()).unwrap_or("-"));
            }
        }
        SharingsCmd::Status { domain, id, json } => {
            let inst = open(&domain)?;
            let server = ServerApi::new(&core, &inst)?;
            let status = server.get(&format!("/sharings/{}/status", sid(&id)?)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        SharingsCmd::Sync { domain, id, timeout } => {
            let inst = open(&domain)?;
            let id = sid(&id)?;
            let server = ServerApi::new(&core, &inst)?;
            server.post(&format!("/sharings/{id}/sync")).await?;
            follow_sync(&server, &id, std::time::Duration::from_secs(timeout)).await?;
        }
        SharingsCmd::Revoke { domain, id, member } => {
            let inst = open(&domain)?;
            let id = sid(&id)?;
            let s = sharing::load(inst.store.as_ref(), &id).await?.context("no such sharing")?;
            // The route of the sharing API that does the same (`http::sharings`).
            let path = match (s.owner, member) {
                (true, Some(m)) => format!("/sharings/{id}/recipients/{m}"),
                (false, Some(_)) => {
                    anyhow::bail!("only the owner revokes a member; on a recipient, revoke leaves the sharing")
                }
                (true, None) => format!("/sharings/{id}/recipients"),
                (false, None) => format!("/sharings/{id}/recipients/self"),
            };
            // Through the running server when there is one: the end of a files sharing judges
            // which files' bytes are still arriving (`sharing::ended`), which only the process
            // receiving them knows. Here only when no server answers.
            let server = ServerApi::new(&core, &inst)?;
            let active = match server.try_send(reqwest::Method::DELETE, &path).await? {
                Some(answer) => {
                    print!("Revoked by the running server; ");
                    answer["data"]["attributes"]["active"] == true
                }
                None => {
                    let s = match member {
                        Some(m) => service::revoke(&cx, &inst, &id, Some(sharing::MemberIndex(m))).await?,
                        None => service::end(&cx, &inst, &id).await?,
                    };
                    print!("Revoked here (no server answered at {}: it tells the peers once it runs); ", server.base);
                    s.active
                }
            };
            println!("sharing is now {}.", if active { "active" } else { "inactive" });
        }
    }
    Ok(())
}

/// Calls the running server (at `listen`) as the instance, with a short-lived token minted here.
struct ServerApi {
    client: reqwest::Client,
    base: String,
    host: String,
    token: String,
}

impl ServerApi {
    fn new(core: &Core, inst: &Instance) -> anyhow::Result<ServerApi> {
        let scope = PermissionSet::parse("io.cozy.sharings").map_err(anyhow::Error::msg)?;
        let listen = core.config.listen.replace("0.0.0.0", "127.0.0.1");
        Ok(ServerApi {
            client: reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(30)).build()?,
            base: format!("http://{listen}"),
            host: inst.domain.to_string(),
            token: inst.keys.issue(Audience::Cli, "cli", 600, Some(&scope), None),
        })
    }

    async fn send(&self, method: reqwest::Method, path: &str) -> anyhow::Result<serde_json::Value> {
        self.try_send(method, path).await?.with_context(|| format!("is `hearth serve` running on {}?", self.base))
    }

    /// [`ServerApi::send`], `None` when no server accepts the connection.
    async fn try_send(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let sent = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Host", &self.host)
            .bearer_auth(&self.token)
            .send()
            .await;
        let resp = match sent {
            Err(e) if e.is_connect() => return Ok(None),
            sent => sent.with_context(|| format!("calling the server at {}", self.base))?,
        };
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            anyhow::bail!("the server answered {status}: {}", body["reason"].as_str().unwrap_or("no reason"));
        }
        Ok(Some(body))
    }

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(reqwest::Method::GET, path).await
    }

    async fn post(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(reqwest::Method::POST, path).await
    }
}

fn print_status(status: &serde_json::Value) {
    let a = &status["data"]["attributes"];
    println!(
        "Sharing {} ({}, {}), {} document(s) tracked",
        status["data"]["id"].as_str().unwrap_or("-"),
        if a["owner"] == true { "outgoing" } else { "incoming" },
        if a["active"] == true { "active" } else { "inactive" },
        a["documents"]
    );
    if a["initial_set_pending"] == true {
        println!("Its initial set (what matched its rules when it started) is still being added to its feed.");
    }
    println!(
        "{:<4} {:<14} {:<20} {:<9} {:>8} {:>8} {:<26} LAST ERROR",
        "#", "STATUS", "NAME", "STATE", "PENDING", "REFUSED", "LAST SUCCESS"
    );
    for m in a["members"].as_array().into_iter().flatten() {
        let r = &m["replication"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
        let number = |v: &serde_json::Value| if r.is_null() { "-".into() } else { v.to_string() };
        println!(
            "{:<4} {:<14} {:<20} {:<9} {:>8} {:>8} {:<26} {}",
            m["index"].as_u64().unwrap_or_default(),
            text(&m["status"]),
            text(&m["name"]),
            // The worse of its documents' and its content's (`health`; servers before it: the
            // documents').
            if r.is_null() {
                "-".into()
            } else {
                text(if m["health"].is_string() { &m["health"] } else { &r["health"] })
            },
            number(&r["pending"]),
            number(&r["refused_docs"]),
            text(&r["last_success"]),
            text(&r["last_error"]),
        );
        // Why the member's copy is incomplete, in its own words.
        if r["refused_docs"].as_u64().unwrap_or(0) > 0 {
            let last = &r["last_refusal"];
            println!("     last refused: {} ({}): {}", text(&last["doc"]), text(&last["at"]), text(&last["reason"]));
        }
        // What this instance refused of what the member sent (a read-only member's edits).
        let received = &m["refused_received"];
        let (docs, files) = (received["docs"].as_u64().unwrap_or(0), received["files"].as_u64().unwrap_or(0));
        if docs > 0 || files > 0 {
            let what = match (docs, files) {
                (d, 0) => format!("{d} document(s)"),
                (0, f) => format!("the content of {f} file(s)"),
                (d, f) => format!("{d} document(s) and the content of {f} file(s)"),
            };
            println!(
                "     refused here: {what} it sent, last {} ({}): {}",
                text(&received["last"]["doc"]),
                text(&received["last"]["at"]),
                text(&received["last"]["reason"])
            );
        }
        // Files sharings: the content still to deliver to this member.
        let c = &m["content"];
        if !c.is_null() {
            println!(
                "     content: {} file(s), {} pending; {} file(s), {} sent{}",
                c["files_pending"],
                bytes(&c["bytes_pending"]),
                c["files_sent"],
                bytes(&c["bytes_sent"]),
                c["last_error"].as_str().map(|e| format!("; last error: {e}")).unwrap_or_default()
            );
        }
    }
    let missing = &a["content_missing"];
    if !missing.is_null() {
        println!("Content not arrived here yet: {} file(s), {}", missing["files"], bytes(&missing["bytes"]));
    }
}

/// A byte count for people: `1.5 MB`.
fn bytes(v: &serde_json::Value) -> String {
    let n = v.as_u64().unwrap_or(0) as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} B"),
    }
}

/// What one ready member still waits for, from its entry in `GET /sharings/:id/status`.
#[derive(Debug, Default, PartialEq)]
struct Pending {
    /// Changes past its checkpoint, and whether a replication is running now.
    docs: u64,
    running: bool,
    /// Files whose content it may still lack, and their bytes (files sharings).
    files: u64,
    bytes: u64,
    content_running: bool,
}

impl Pending {
    fn of(member: &serde_json::Value) -> Pending {
        let (r, c) = (&member["replication"], &member["content"]);
        Pending {
            docs: r["pending"].as_u64().unwrap_or(0),
            running: r["running"] == true,
            files: c["files_pending"].as_u64().unwrap_or(0),
            bytes: c["bytes_pending"].as_u64().unwrap_or(0),
            content_running: c["running"] == true,
        }
    }

    /// Metadata and content at rest: nothing pending, nothing running.
    fn at_rest(&self) -> bool {
        self.docs == 0 && !self.running && self.files == 0 && !self.content_running
    }

    fn describe(&self) -> String {
        let mut out = format!("{} change(s) pending", self.docs);
        if self.files > 0 {
            out.push_str(&format!(", content: {} file(s), {} pending", self.files, bytes(&json_u64(self.bytes))));
        }
        out
    }
}

fn json_u64(n: u64) -> serde_json::Value {
    serde_json::Value::from(n)
}

/// What is still not at rest, in one line per member (and the content still to arrive here).
fn still_pending(members: &[serde_json::Value], missing: &serde_json::Value, taking_initial_set: bool) -> String {
    let mut lines: Vec<String> = members
        .iter()
        .filter(|m| !m["replication"].is_null())
        .map(|m| (m, Pending::of(m)))
        .filter(|(_, p)| !p.at_rest())
        .map(|(m, p)| {
            let error = m["content"]["last_error"].as_str().or(m["replication"]["last_error"].as_str());
            format!(
                "  {}: {}{}",
                m["name"].as_str().unwrap_or("a member"),
                p.describe(),
                error.map(|e| format!(" (last error: {e})")).unwrap_or_default()
            )
        })
        .collect();
    if missing["files"].as_u64().unwrap_or(0) > 0 {
        lines.push(format!(
            "  content still to arrive here: {} file(s), {}",
            missing["files"],
            bytes(&missing["bytes"])
        ));
    }
    if taking_initial_set {
        lines.push("  the initial set is still being added to the sharing's feed".to_owned());
    }
    lines.join("\n")
}

/// Shows a progress bar per ready member, until its metadata (the changes past its checkpoint)
/// and, for a sharing of files, its content (`content.files_pending`) are at rest, and the
/// content this instance waits for (`content_missing`) has arrived; then "Up to date.". A
/// sharing with no ready member (nobody has accepted, or all were revoked) is an error:
/// nothing can be synced. After `timeout`, or on Ctrl-C, it stops waiting with an error that
/// lists what is still pending; the running server goes on syncing either way.
async fn follow_sync(server: &ServerApi, id: &SharingId, timeout: std::time::Duration) -> anyhow::Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:<20} [{bar:40}] {pos}/{len} {msg}")
        .map_err(anyhow::Error::msg)?
        .progress_chars("=> ");
    let mut by_member: std::collections::BTreeMap<u64, ProgressBar> = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + timeout;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let background = "the running server goes on syncing; follow it with `hearth sharings status`";
    loop {
        let status = server.get(&format!("/sharings/{id}/status")).await?;
        let attributes = &status["data"]["attributes"];
        let members = attributes["members"].as_array().cloned().unwrap_or_default();
        let ready: Vec<&serde_json::Value> = members.iter().filter(|m| !m["replication"].is_null()).collect();
        if ready.is_empty() {
            let states: Vec<String> = members
                .iter()
                .map(|m| {
                    format!("{} is {}", m["name"].as_str().unwrap_or("a member"), m["status"].as_str().unwrap_or("?"))
                })
                .collect();
            anyhow::bail!(
                "nothing to sync: no member of this sharing is ready ({}); a member is ready once it has accepted \
                 the invitation{}",
                if states.is_empty() { "it has no member".to_owned() } else { states.join(", ") },
                if attributes["active"] == false { ", and this sharing is no longer active" } else { "" }
            );
        }
        let mut done = true;
        for m in &ready {
            let r = &m["replication"];
            let p = Pending::of(m);
            let index = m["index"].as_u64().unwrap_or(0);
            let bar = by_member.entry(index).or_insert_with(|| {
                let b = bars.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(m["name"].as_str().unwrap_or("member").to_owned());
                b
            });
            let total = r["total"].as_u64().unwrap_or(0).max(r["processed"].as_u64().unwrap_or(0) + p.docs);
            bar.set_length(total.max(1));
            bar.set_position(total.saturating_sub(p.docs));
            let health = m["health"].as_str().or(r["health"].as_str()).unwrap_or("");
            let error = m["content"]["last_error"].as_str().or(r["last_error"].as_str());
            bar.set_message(format!(
                "{health}; {}{}",
                p.describe(),
                error.map(|e| format!(" ({e})")).unwrap_or_default()
            ));
            done &= p.at_rest();
        }
        let missing = &attributes["content_missing"];
        done &= missing["files"].as_u64().unwrap_or(0) == 0;
        // Nothing pending is not at rest while the initial set is still being taken.
        let taking = attributes["initial_set_pending"] == true;
        done &= !taking;
        if done {
            for b in by_member.values() {
                b.finish();
            }
            println!("Up to date: metadata and content are at rest with {} ready member(s).", ready.len());
            // Delivered is not accepted: say which members refused documents, and why.
            for m in members.iter().filter(|m| m["replication"]["refused_docs"].as_u64().unwrap_or(0) > 0) {
                let r = &m["replication"];
                println!(
                    "{} refused {} document(s), last {}: {}",
                    m["name"].as_str().unwrap_or("a member"),
                    r["refused_docs"],
                    r["last_refusal"]["doc"].as_str().unwrap_or("-"),
                    r["last_refusal"]["reason"].as_str().unwrap_or("-")
                );
            }
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            for b in by_member.values() {
                b.abandon();
            }
            anyhow::bail!(
                "not up to date after {}s (--timeout); still pending:\n{}\n{background}",
                timeout.as_secs(),
                still_pending(&members, missing, taking)
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            _ = &mut interrupted => {
                for b in by_member.values() {
                    b.abandon();
                }
                anyhow::bail!("interrupted; still pending:\n{}\n{background}", still_pending(&members, missing, taking));
            }
        }
    }
}
