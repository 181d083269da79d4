//! The `hearth` command line: `serve`, and the management commands, which all read the same
//! configuration (so they agree on the data dir).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use hearth::auth::{Audience, PermissionSet};
use hearth::instance::{Domain, NewInstance, Registry};
use hearth::store::transfer;
use hearth::{Application, Config};

#[derive(Parser)]
#[command(name = "hearth", version, about = "A self-hosted personal cloud whose instances share documents")]
struct Cli {
    /// Configuration file (TOML); HEARTH_* environment variables override it.
    #[arg(long, global = true, env = "HEARTH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (default 127.0.0.1:8080, data in ./data).
    Serve,
    /// Manage the instances this server hosts.
    #[command(subcommand)]
    Instances(InstancesCmd),
    /// Look at and manage an instance's sharings.
    #[command(subcommand)]
    Sharings(SharingsCmd),
}

#[derive(Subcommand)]
enum SharingsCmd {
    /// List sharings, incoming and outgoing.
    Ls {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Show a sharing: rules, members and their statuses.
    Show {
        domain: String,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the invitation links of members who have not answered yet.
    Invitations { domain: String, id: String },
    /// Replication state of each member (asks the running server).
    Status {
        domain: String,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Replicate now and show progress until every member is up to date (asks the running
    /// server).
    Sync {
        domain: String,
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Revoke a sharing (every member), or one member with --member.
    Revoke {
        domain: String,
        id: String,
        #[arg(long)]
        member: Option<usize>,
    },
}

#[derive(Subcommand)]
enum InstancesCmd {
    /// Create an instance, e.g. `alice.localhost:8080`.
    Add {
        domain: String,
        /// The owner's passphrase (asked on the terminal when omitted).
        #[arg(long)]
        passphrase: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        public_name: Option<String>,
    },
    /// List instances.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove an instance and all its data.
    Rm { domain: String },
    /// Set or change the owner's passphrase.
    Passphrase {
        domain: String,
        #[arg(long)]
        passphrase: Option<String>,
    },
    /// Print a bearer token for the command line.
    Token(TokenArgs),
    /// Write an instance's documents (full revision trees, `_local` documents) to FILE, from the
    /// configured store: export with `store = "sqlite"`, import with `store = "couchdb"` to move.
    Export { domain: String, file: PathBuf },
    /// Load an export into the configured store (the instance must exist; merges like replication).
    Import { file: PathBuf },
    /// Show or set the bytes of file content an instance may hold (its own quota, or the
    /// configured `files.quota_bytes` with --default).
    Quota {
        domain: String,
        /// The new quota in bytes; without it, the quota and the bytes used are shown.
        bytes: Option<u64>,
        /// Go back to the configured default.
        #[arg(long, conflicts_with = "bytes")]
        default: bool,
    },
}

#[derive(Args)]
struct TokenArgs {
    domain: String,
    /// A permission rule such as `io.cozy.notes` or `io.cozy.notes:GET:id1,id2`; repeatable.
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    /// Lifetime in seconds (default from the configuration: 30 days).
    #[arg(long)]
    ttl: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("failed to load the configuration")?;
    match cli.command {
        Command::Serve => serve(config),
        Command::Instances(cmd) => instances(config, cmd),
        Command::Sharings(cmd) => tokio::runtime::Runtime::new()?.block_on(sharings(config, cmd)),
    }
}

fn init_tracing() {
    hearth::logging::init();
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_tracing();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let app = Application::build(config.clone()).await?;
        let registry = app.registry();
        let port = app.port();
        if registry.list()?.is_empty() {
            // A fresh data dir: create an instance for this address so a newcomer has
            // something to talk to at once.
            let domain = Domain::parse(&format!("localhost:{port}")).map_err(anyhow::Error::msg)?;
            registry.ensure(NewInstance { domain: domain.clone(), passphrase: None, email: None, public_name: None })?;
            println!(
                "Created instance {domain} (data in {}).\n\
                 Set its passphrase to log in:   hearth instances passphrase {domain}\n\
                 Get a token for the API:        hearth instances token {domain} --scope io.cozy.notes\n\
                 Then: curl -H \"Authorization: Bearer $TOKEN\" -X POST http://{domain}/data/io.cozy.notes/ -d '{{\"title\":\"hi\"}}'",
                config.data_dir.display()
            );
        }
        let names: Vec<String> = registry.list()?.into_iter().map(|r| r.domain.to_string()).collect();
        println!("hearth listening on http://{} serving {}", config.listen.replace(":0", &format!(":{port}")), names.join(", "));
        let handle = app.handle();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                handle.stop(true).await;
            }
        });
        app.run_until_stopped().await?;
        Ok(())
    })
}

fn read_passphrase(given: Option<String>) -> anyhow::Result<Option<String>> {
    if given.is_some() {
        return Ok(given);
    }
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        return Ok((!line.is_empty()).then_some(line));
    }
    eprint!("Passphrase for the owner (empty for none): ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    Ok((!line.is_empty()).then_some(line))
}

fn instances(config: Config, cmd: InstancesCmd) -> anyhow::Result<()> {
    let registry = Registry::open(Arc::new(config))?;
    let domain = |s: &str| Domain::parse(s).map_err(anyhow::Error::msg);
    match cmd {
        InstancesCmd::Add { domain: d, passphrase, email, public_name } => {
            let d = domain(&d)?;
            let passphrase = read_passphrase(passphrase)?;
            registry.add(NewInstance { domain: d.clone(), passphrase: passphrase.as_deref(), email, public_name })?;
            println!("Created instance {d}");
        }
        InstancesCmd::Ls { json } => {
            let list = registry.list()?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|r| {
                        serde_json::json!({"domain": r.domain.as_str(), "email": r.email, "public_name": r.public_name,
                                           "created_at": r.created_at})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if list.is_empty() {
                println!("No instance yet: hearth instances add DOMAIN");
            } else {
                println!("{:<32} {:<24} CREATED", "DOMAIN", "NAME");
                for r in list {
                    println!("{:<32} {:<24} {}", r.domain, r.public_name.as_deref().unwrap_or("-"), r.created_at);
                }
            }
        }
        InstancesCmd::Rm { domain: d } => {
            let d = domain(&d)?;
            registry.remove(&d)?;
            let files = hearth::files::FilesRegistry::new(registry.config())?;
            tokio::runtime::Runtime::new()?.block_on(files.destroy(&d))?;
            println!("Removed instance {d}");
        }
        InstancesCmd::Passphrase { domain: d, passphrase } => {
            let d = domain(&d)?;
            let Some(p) = read_passphrase(passphrase)? else {
                bail!("an empty passphrase is not allowed");
            };
            registry.set_passphrase(&d, &p)?;
            println!("Passphrase of {d} updated");
        }
        InstancesCmd::Token(args) => {
            let d = domain(&args.domain)?;
            let inst = registry.get(&d)?.with_context(|| format!("no instance {d}"))?;
            let scope = PermissionSet::parse(&args.scopes.join(" ")).map_err(anyhow::Error::msg)?;
            let ttl = args.ttl.unwrap_or(registry.config().cli_token_ttl_secs);
            println!("{}", inst.keys.issue(Audience::Cli, "cli", ttl, Some(&scope), None));
        }
        InstancesCmd::Export { domain: d, file } => {
            let d = domain(&d)?;
            let inst = registry.get(&d)?.with_context(|| format!("no instance {d}"))?;
            let out = std::fs::File::create(&file).with_context(|| format!("failed to create {}", file.display()))?;
            let mut out = std::io::BufWriter::new(out);
            let rt = tokio::runtime::Runtime::new()?;
            let sum = rt.block_on(transfer::export(inst.store.as_ref(), d.as_str(), &mut out))?;
            println!("Exported {d} to {}: {sum}", file.display());
        }
        InstancesCmd::Quota { domain: d, bytes, default } => {
            let d = domain(&d)?;
            let inst = registry.get(&d)?.with_context(|| format!("no instance {d}"))?;
            let rt = tokio::runtime::Runtime::new()?;
            let store = inst.store.as_ref();
            if bytes.is_some() || default {
                rt.block_on(hearth::files::set_instance_quota(store, bytes))?;
            }
            let own = rt.block_on(hearth::files::instance_quota(store))?;
            let files = hearth::files::FilesRegistry::new(registry.config())?;
            let used = rt.block_on(async { files.of(&inst).await?.used().await })?;
            match own {
                Some(q) => println!("{d}: quota {q} bytes (its own), {used} bytes used"),
                None => println!(
                    "{d}: quota {} bytes (the default, files.quota_bytes), {used} bytes used",
                    registry.config().files.quota_bytes
                ),
            }
        }
        InstancesCmd::Import { file } => {
            let input = std::fs::File::open(&file).with_context(|| format!("failed to open {}", file.display()))?;
            let mut input = std::io::BufReader::new(input);
            let d = domain(&transfer::exported_domain(&mut input)?)?;
            let inst = registry
                .get(&d)?
                .with_context(|| format!("no instance {d}: create it first (hearth instances add)"))?;
            let rt = tokio::runtime::Runtime::new()?;
            let sum = rt.block_on(transfer::import(inst.store.as_ref(), &mut input))?;
            println!("Imported into {d}: {sum}");
        }
    }
    Ok(())
}

async fn sharings(config: Config, cmd: SharingsCmd) -> anyhow::Result<()> {
    use hearth::sharing::{self, service, SharingId};
    let config = Arc::new(config);
    let registry = Arc::new(Registry::open(config.clone())?);
    let files = Arc::new(hearth::files::FilesRegistry::new(&config)?);
    let svc = hearth::services::Services {
        federation: Arc::new(hearth::federation::client::Federation::new(&config)?),
        config,
        registry: registry.clone(),
        outbox: Arc::new(tokio::sync::Notify::new()),
        sync: Arc::new(hearth::sync::manager::SyncManager::default()),
        request_fetches: Arc::new(tokio::sync::Semaphore::new(hearth::sharing::request::MAX_CONCURRENT_FETCHES)),
        files,
    };
    let open = |d: &str| -> anyhow::Result<Arc<hearth::instance::Instance>> {
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
            let list = service::invitations(&svc, &inst, &s);
            if list.is_empty() {
                println!("No invitation waiting for an answer");
            }
            for (i, m, link) in list {
                println!("{i}  {}  {link}", m.email.as_deref().or(m.name.as_deref()).unwrap_or("-"));
            }
        }
        SharingsCmd::Status { domain, id, json } => {
            let inst = open(&domain)?;
            let server = ServerApi::new(&svc, &inst)?;
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
            let server = ServerApi::new(&svc, &inst)?;
            server.post(&format!("/sharings/{id}/sync")).await?;
            follow_sync(&server, &id, std::time::Duration::from_secs(timeout)).await?;
        }
        SharingsCmd::Revoke { domain, id, member } => {
            let inst = open(&domain)?;
            let id = sid(&id)?;
            let s = match sharing::load(inst.store.as_ref(), &id).await?.context("no such sharing")? {
                s if s.owner => service::revoke(&svc, &inst, &id, member).await?,
                _ if member.is_some() => {
                    anyhow::bail!("only the owner revokes a member; on a recipient, revoke leaves the sharing")
                }
                _ => service::leave(&svc, &inst, &id).await?,
            };
            println!(
                "Revoked. The peers are told by the running server (hearth serve); sharing is now {}.",
                if s.active { "active" } else { "inactive" }
            );
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
    fn new(svc: &hearth::services::Services, inst: &hearth::instance::Instance) -> anyhow::Result<ServerApi> {
        let scope = PermissionSet::parse("io.cozy.sharings").map_err(anyhow::Error::msg)?;
        let listen = svc.config.listen.replace("0.0.0.0", "127.0.0.1");
        Ok(ServerApi {
            client: reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(30)).build()?,
            base: format!("http://{listen}"),
            host: inst.domain.to_string(),
            token: inst.keys.issue(Audience::Cli, "cli", 600, Some(&scope), None),
        })
    }

    async fn send(&self, method: reqwest::Method, path: &str) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Host", &self.host)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("is `hearth serve` running on {}?", self.base))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            anyhow::bail!("the server answered {status}: {}", body["reason"].as_str().unwrap_or("no reason"));
        }
        Ok(body)
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
            if r.is_null() { "-".into() } else { text(&r["health"]) },
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
    }
}

/// Shows a progress bar per member replicated to, until nothing is pending.
async fn follow_sync(
    server: &ServerApi,
    id: &hearth::sharing::SharingId,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:<20} [{bar:40}] {pos}/{len} {msg}")
        .map_err(anyhow::Error::msg)?
        .progress_chars("=> ");
    let mut by_member: std::collections::BTreeMap<u64, ProgressBar> = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let status = server.get(&format!("/sharings/{id}/status")).await?;
        let members = status["data"]["attributes"]["members"].as_array().cloned().unwrap_or_default();
        let mut done = true;
        for m in members.iter().filter(|m| !m["replication"].is_null()) {
            let r = &m["replication"];
            let index = m["index"].as_u64().unwrap_or(0);
            let bar = by_member.entry(index).or_insert_with(|| {
                let b = bars.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(m["name"].as_str().unwrap_or("member").to_owned());
                b
            });
            let pending = r["pending"].as_u64().unwrap_or(0);
            let total = r["total"].as_u64().unwrap_or(0).max(r["processed"].as_u64().unwrap_or(0) + pending);
            bar.set_length(total.max(1));
            bar.set_position(total.saturating_sub(pending));
            bar.set_message(match r["last_error"].as_str() {
                Some(e) => format!("{} ({e})", r["health"].as_str().unwrap_or("")),
                None => r["health"].as_str().unwrap_or("").to_owned(),
            });
            if pending > 0 || r["running"] == true {
                done = false;
            }
        }
        if done {
            for b in by_member.values() {
                b.finish();
            }
            println!("Up to date.");
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
            anyhow::bail!("still replicating after {}s", timeout.as_secs());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
