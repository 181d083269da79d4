//! `hearth instances ...`: the instances this server hosts, their passphrases, tokens, and
//! moving their documents between stores.

use std::io::IsTerminal;

use anyhow::{bail, Context};
use hearth::auth::{Audience, PermissionSet};
use hearth::instance::{Domain, NewInstance};
use hearth::store::transfer;
use hearth::Core;

use super::InstancesCmd;

pub(super) fn run(core: Core, cmd: InstancesCmd) -> anyhow::Result<()> {
    let files = core.files;
    let registry = core.registry;
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
