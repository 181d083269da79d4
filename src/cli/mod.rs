//! The `hearth` command line: `serve`, and the management commands, which all read the same
//! configuration (so they agree on the data dir) and work on the same application parts
//! (`hearth::Core`) that `hearth serve` runs: nothing is wired twice.

mod instances;
mod sharings;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hearth::instance::{Domain, NewInstance};
use hearth::{Application, Config, Core};

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
pub(crate) enum SharingsCmd {
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
    /// Replicate now and show progress until the metadata and the content of every ready member
    /// are at rest (asks the running server); an error when no member is ready, on timeout or
    /// on Ctrl-C (the server goes on syncing).
    Sync {
        domain: String,
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Revoke a sharing (every member), or one member with --member; on a recipient, leave it.
    /// Done by the running server when one answers at `listen` (as `DELETE
    /// /sharings/:id/recipients[/:index|/self]`), here otherwise.
    Revoke {
        domain: String,
        id: String,
        #[arg(long)]
        member: Option<usize>,
    },
}

#[derive(Subcommand)]
pub(crate) enum InstancesCmd {
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
pub(crate) struct TokenArgs {
    pub(crate) domain: String,
    /// A permission rule such as `io.cozy.notes` or `io.cozy.notes:GET:id1,id2`; repeatable.
    #[arg(long = "scope", required = true)]
    pub(crate) scopes: Vec<String>,
    /// Lifetime in seconds (default from the configuration: 30 days).
    #[arg(long)]
    pub(crate) ttl: Option<u64>,
}

/// Parses the command line and runs the command.
pub fn main() -> anyhow::Result<()> {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("failed to load the configuration")?;
    match cli.command {
        Command::Serve => serve(config),
        Command::Instances(cmd) => instances::run(Core::open(config)?, cmd),
        Command::Sharings(cmd) => tokio::runtime::Runtime::new()?.block_on(sharings::run(Core::open(config)?, cmd)),
    }
}

/// glibc's malloc gives threads arenas of their own (up to 8 per core) and keeps what each one
/// frees. A sharing sender reading 10 KB documents on the store's threads peaked at 110–116 MiB
/// of resident memory at 20k documents and 132–134 MiB at 100k; with two arenas, 65–78 MiB, at
/// the same speed (`hearth-bench servers`). glibc reads the limit only when a process starts, so
/// the server starts itself again with `MALLOC_ARENA_MAX=2`, once, unless that variable is set
/// already (by its first start, or by whoever runs it): the same process id, arguments (`argv[0]`
/// included) and environment; the process name (`comm`) becomes the binary's file name when it
/// was started through a symlink.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const ARENAS: &str = "2";
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let err = std::process::Command::new(exe)
            .arg0(args.next().unwrap_or_default())
            .args(args)
            .env("MALLOC_ARENA_MAX", ARENAS)
            .exec();
        // `exec` returns only when it failed (the binary was replaced meanwhile, say).
        eprintln!("warning: hearth serve goes on with glibc's default malloc arenas: {err}");
    }
}

/// A closed stdout (`hearth sharings status … | head`) ends the process quietly, for every
/// command: `print!` panics with "failed printing to stdout: Broken pipe" when the reader has
/// gone, and that panic exits with 141 (128 + SIGPIPE, what a shell reports for a process
/// ended by SIGPIPE), without the panic text. Rust ignores SIGPIPE; restoring its default
/// instead would also kill a command writing to a socket its peer closed. Any other panic is
/// reported as before.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        let epipe = message.contains("Broken pipe") || message.contains("os error 32");
        if message.starts_with("failed printing to stdout") && epipe {
            std::process::exit(141);
        }
        report(info)
    }));
}

fn serve(config: Config) -> anyhow::Result<()> {
    limit_malloc_arenas();
    hearth::logging::init();
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
        // Ctrl-C or SIGTERM (a service manager's stop) stop it gracefully, workers first (see
        // `app::Stopper`; the server does not handle signals itself).
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            let interrupt = async {
                if tokio::signal::ctrl_c().await.is_err() {
                    // No Ctrl-C handler: SIGTERM alone stops it.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = interrupt => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: replication now, requests in flight within 5 s, writes they began within 30 s");
            handle.stop(true).await;
        });
        app.run_until_stopped().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    // Blocking work still running (a write past its grace, an fsync on a stalled disk) does not
    // hold the exit for long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(())
}
