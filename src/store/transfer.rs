//! Moving an instance between backends: `hearth instances export DOMAIN FILE` writes every
//! document of every doctype with its whole revision tree (every leaf with its body and
//! `_revisions`), and every `_local` document, as JSON lines; `hearth instances import FILE`
//! writes them into the configured backend with `new_edits: false`, so trees, winners and
//! conflicts come out identical. Both work on any [`Store`]: to move from SQLite to CouchDB,
//! export with `store = "sqlite"` and import with `store = "couchdb"`.
//!
//! Sharings, the outbox and anything else hearth keeps as documents of internal doctypes move
//! with them, since export covers every doctype. The instance itself (keys, passphrase) lives
//! in the registry, not in the store: import needs the instance to exist already.
//!
//! Sequence numbers are the backend's own and do not move. Import first advances each
//! doctype's sequence past the source's `update_seq`, so that any checkpoint a replicator took
//! against the old backend (its `_local` documents move too) sees every imported document as a
//! change after it: at worst documents are sent again, which replication makes harmless.
//!
//! The export is a consistent snapshot only if nothing writes meanwhile (stop the server);
//! otherwise a document changed during the export may appear twice, and import merges both.
//! Importing twice, or into a store that already has some of the documents, merges as
//! replication does.
//!
//! Format, one JSON object per line:
//! `{"type":"header","format":"hearth-export","version":1,"domain":…}`, then per doctype
//! `{"type":"doctype","doctype":…,"update_seq":…}` followed by its
//! `{"type":"doc","doctype":…,"id":…,"leaves":[{"_id","_rev","_revisions","_deleted"?,…body}]}`
//! and `{"type":"local","doctype":…,"id":…,"body":{…}}` lines, and a final
//! `{"type":"end","doctypes":…,"docs":…,"leaves":…,"locals":…}` that tells a complete file from a
//! truncated one.

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::doc::{parse_doc, render};
use super::*;

pub const FORMAT: &str = "hearth-export";
pub const VERSION: u64 = 1;
/// Changes read per page, and documents written per `bulk_docs` on import.
const PAGE: usize = 200;

/// One line. Documents and `_local` bodies are carried as their JSON text, never parsed into
/// numbers (see `store::body`), so they move exactly as written.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Header { format: String, version: u64, domain: String },
    Doctype { doctype: String, update_seq: u64 },
    Doc { doctype: String, id: String, leaves: Vec<Box<RawValue>> },
    Local { doctype: String, id: String, body: Box<RawValue> },
    End { doctypes: u64, docs: u64, leaves: u64, locals: u64 },
}

/// A line's type, read first: serde cannot buffer `RawValue`s inside an internally tagged
/// enum, so `doc` and `local` lines are then read into their own structs.
#[derive(Deserialize)]
struct LineType {
    r#type: String,
}

#[derive(Deserialize)]
struct DocLine {
    doctype: String,
    id: String,
    leaves: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct LocalLine {
    doctype: String,
    id: String,
    body: Box<RawValue>,
}

fn read_line(line: &str) -> serde_json::Result<Line> {
    let kind: LineType = serde_json::from_str(line)?;
    Ok(match kind.r#type.as_str() {
        "doc" => {
            let DocLine { doctype, id, leaves } = serde_json::from_str(line)?;
            Line::Doc { doctype, id, leaves }
        }
        "local" => {
            let LocalLine { doctype, id, body } = serde_json::from_str(line)?;
            Line::Local { doctype, id, body }
        }
        _ => serde_json::from_str(line)?,
    })
}

/// What an export or import moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub doctypes: u64,
    pub docs: u64,
    pub leaves: u64,
    pub locals: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} doctypes, {} documents ({} revisions with bodies), {} _local documents",
            self.doctypes, self.docs, self.leaves, self.locals
        )
    }
}

fn write_line(out: &mut dyn Write, line: &Line) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line).context("failed to encode an export line")?;
    out.write_all(b"\n").context("failed to write the export")?;
    Ok(())
}

/// Writes every document and `_local` document of `store` to `out`.
pub async fn export(store: &dyn Store, domain: &str, out: &mut dyn Write) -> anyhow::Result<Summary> {
    let mut sum = Summary::default();
    write_line(out, &Line::Header { format: FORMAT.into(), version: VERSION, domain: domain.into() })?;
    for doctype in store.doctypes().await.context("failed to list the doctypes")? {
        let info = store.db_info(&doctype).await.with_context(|| format!("failed to read {doctype}"))?;
        write_line(out, &Line::Doctype { doctype: doctype.to_string(), update_seq: info.update_seq })?;
        sum.doctypes += 1;
        let mut since = 0;
        loop {
            let page = store
                .changes(&doctype, &ChangesQuery { since, limit: Some(PAGE), ..Default::default() })
                .await
                .with_context(|| format!("failed to read the changes of {doctype}"))?;
            for row in &page.rows {
                let leaves = match store.open_revs(&doctype, &row.id, OpenRevs::All, false).await {
                    Ok(l) => l,
                    // Purged between the feed and the read: nothing to move.
                    Err(StoreError::NotFound) => continue,
                    Err(e) => return Err(e).with_context(|| format!("failed to read {doctype}/{}", row.id)),
                };
                let leaves: Vec<Box<RawValue>> = leaves
                    .iter()
                    .filter_map(|l| match l {
                        OpenRev::Found(d) => Some(render(d)),
                        OpenRev::Missing(_) => None,
                    })
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("failed to render {doctype}/{}", row.id))?;
                if leaves.is_empty() {
                    continue;
                }
                sum.docs += 1;
                sum.leaves += leaves.len() as u64;
                write_line(out, &Line::Doc { doctype: doctype.to_string(), id: row.id.to_string(), leaves })?;
            }
            if page.rows.len() < PAGE || page.last_seq <= since {
                break;
            }
            since = page.last_seq;
        }
        for local in store.local_docs(&doctype).await.with_context(|| format!("failed to list _local of {doctype}"))? {
            sum.locals += 1;
            let body = RawValue::from_string(local.body.as_str().to_owned())
                .with_context(|| format!("_local/{} of {doctype} is corrupt", local.id))?;
            write_line(out, &Line::Local { doctype: doctype.to_string(), id: local.id, body })?;
        }
    }
    write_line(out, &Line::End { doctypes: sum.doctypes, docs: sum.docs, leaves: sum.leaves, locals: sum.locals })?;
    out.flush().context("failed to write the export")?;
    Ok(sum)
}

/// The domain an export file was made from (its first line).
pub fn exported_domain(input: &mut dyn BufRead) -> anyhow::Result<String> {
    let mut first = String::new();
    input.read_line(&mut first).context("failed to read the export")?;
    match read_line(&first) {
        Ok(Line::Header { format, version, domain }) if format == FORMAT => {
            if version != VERSION {
                bail!("export format version {version} is not supported (this hearth reads {VERSION})");
            }
            Ok(domain)
        }
        _ => bail!("not a hearth export: the first line must be its header"),
    }
}

/// Writes an export into `store`; `input` is positioned after the header (see
/// [`exported_domain`]).
pub async fn import(store: &dyn Store, input: &mut dyn BufRead) -> anyhow::Result<Summary> {
    let mut sum = Summary::default();
    let mut batch: Vec<DocWrite> = Vec::new();
    let mut batch_doctype: Option<Doctype> = None;
    let mut ended = None;
    let mut line = String::new();
    let mut number = 1;
    loop {
        line.clear();
        number += 1;
        if input.read_line(&mut line).context("failed to read the export")? == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        if ended.is_some() {
            bail!("line {number}: data after the end of the export");
        }
        let parsed = read_line(&line).with_context(|| format!("line {number} is not valid"))?;
        let doctype_of =
            |s: &str| Doctype::parse(s).map_err(anyhow::Error::msg).with_context(|| format!("line {number}"));
        match parsed {
            Line::Header { .. } => bail!("line {number}: a second header"),
            Line::Doctype { doctype, update_seq } => {
                flush(store, &mut batch_doctype, &mut batch).await?;
                let doctype = doctype_of(&doctype)?;
                store
                    .advance_seq(&doctype, update_seq)
                    .await
                    .with_context(|| format!("failed to prepare {doctype}"))?;
                sum.doctypes += 1;
            }
            Line::Doc { doctype, id, leaves } => {
                let doctype = doctype_of(&doctype)?;
                if batch_doctype.as_ref() != Some(&doctype) {
                    flush(store, &mut batch_doctype, &mut batch).await?;
                    batch_doctype = Some(doctype);
                }
                let id = DocId::parse(&id).map_err(anyhow::Error::msg).with_context(|| format!("line {number}"))?;
                sum.docs += 1;
                for leaf in leaves {
                    let w = parse_doc(&leaf, Some(id.clone()), false)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("line {number}: a revision of {id}"))?;
                    batch.push(w);
                    sum.leaves += 1;
                }
                if batch.len() >= PAGE {
                    flush(store, &mut batch_doctype, &mut batch).await?;
                }
            }
            Line::Local { doctype, id, body } => {
                flush(store, &mut batch_doctype, &mut batch).await?;
                let doctype = doctype_of(&doctype)?;
                let body =
                    Body::parse(body.get()).map_err(anyhow::Error::msg).with_context(|| format!("line {number}"))?;
                store.put_local(&doctype, &id, body).await.with_context(|| format!("failed to write _local/{id}"))?;
                sum.locals += 1;
            }
            Line::End { doctypes, docs, leaves, locals } => {
                ended = Some(Summary { doctypes, docs, leaves, locals });
            }
        }
    }
    flush(store, &mut batch_doctype, &mut batch).await?;
    match ended {
        None => bail!("the export is truncated (no end line); what it held was imported, run it again once complete"),
        Some(expected) if expected != sum => bail!("the export announces {expected} but holds {sum}"),
        Some(_) => Ok(sum),
    }
}

async fn flush(store: &dyn Store, doctype: &mut Option<Doctype>, batch: &mut Vec<DocWrite>) -> anyhow::Result<()> {
    let Some(dt) = doctype.as_ref() else {
        return Ok(());
    };
    if batch.is_empty() {
        return Ok(());
    }
    let errors = store
        .bulk_docs(dt, std::mem::take(batch), false)
        .await
        .with_context(|| format!("failed to write documents of {dt}"))?;
    if let Some(e) = errors.first() {
        bail!("the store refused a revision of {dt}: {e:?}");
    }
    Ok(())
}
