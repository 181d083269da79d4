//! `/sharings/...` routes for apps, authorised by bearer app tokens: creating and listing
//! sharings, reading one, adding recipients, revoking, leaving, the read-only switch, the
//! replication status and a sync on demand.

use super::*;
use crate::auth::PermissionSet;
use crate::http::callers::{AppCaller, ManagedMember, ManagedSharing, ReadableSharing, SharingReader};
use crate::instance::Instance;
use crate::sharing::invitations;

/// `POST /sharings/` — creates a sharing (JSON:API `io.cozy.sharings`); 201 with the sharing.
pub(super) async fn create(
    inst: Inst,
    caller: AppCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = json_body(&req, payload).await?;
    let s = service::create(&state_of(&req)?.sharing, &inst.0, &caller.perms, &body).await?;
    Ok(jsonapi(StatusCode::CREATED, doc(&s)))
}

/// `GET /sharings/?direction=incoming|outgoing&status=&doctype=&page[cursor]=&page[limit]=`.
pub(super) async fn list(inst: Inst, AppCaller { perms, .. }: AppCaller, req: HttpRequest) -> ApiResult<HttpResponse> {
    let q = Query::of(&req)?;
    let outgoing = match q.get("direction") {
        None => None,
        Some("outgoing") => Some(true),
        Some("incoming") => Some(false),
        Some(_) => return Err(ApiError::bad_request("direction must be incoming or outgoing")),
    };
    let status = q
        .get("status")
        .map(|s| MemberStatus::parse(s).ok_or_else(|| ApiError::bad_request("unknown status")))
        .transpose()?;
    let limit = match q.get("page[limit]") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad_request("page[limit] must be 1 to 1000"))?,
    };
    let query = ListQuery {
        outgoing,
        status,
        doctype: q.get("doctype").map(str::to_owned),
        cursor: q.get("page[cursor]").map(str::to_owned),
        limit,
    };
    let (items, next) = service::list_filtered(&inst.0, &query).await?;
    let data: Vec<Value> = items.iter().filter(|s| may_read(&perms, s)).map(Sharing::to_api).collect();
    let mut out = json!({"data": data, "meta": {"count": data.len()}});
    if outgoing != Some(false) {
        // The owner's link permissions and invitation links, apart from the sharings.
        let first_page = query.cursor.is_none();
        out["included"] = json!(included(&inst.0, &perms, &items, first_page).await?);
    }
    if let Some(cursor) = next {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("direction", q.get("direction")), ("status", q.get("status")), ("doctype", q.get("doctype"))] {
            if let Some(v) = v {
                url.append_pair(k, v);
            }
        }
        url.append_pair("page[cursor]", &cursor).append_pair("page[limit]", &limit.to_string());
        out["links"] = json!({"next": format!("/sharings/?{}", url.finish())});
    }
    Ok(jsonapi(StatusCode::OK, out))
}

/// `shared_docs` listed per page of `GET /sharings/:id` when `page[limit]` is not given.
pub(super) const SHARED_DOCS_PAGE: usize = 100;
/// The largest `page[limit]` of `GET /sharings/:id`.
pub(super) const SHARED_DOCS_MAX_PAGE: usize = 1000;

/// `GET /sharings/:id?page[limit]=&page[cursor]=` — the sharing, for the owner's apps, or a
/// member's instance (with its token), with `relationships.shared_docs` as in Cozy: the
/// documents in the sharing on this instance, `{"id", "type"}` ordered by doctype then id,
/// ids as this instance knows them (a member's instance gets them in its own id space).
/// Paginated: `page[limit]` documents (default 100, 1 to 1000); when more follow,
/// `shared_docs.links.next` is the URL of the next page (`page[cursor]` is opaque).
pub(super) async fn get_sharing(inst: Inst, caller: SharingReader, req: HttpRequest) -> ApiResult<HttpResponse> {
    let SharingReader { sharing: s, member, .. } = caller;
    let q = Query::of(&req)?;
    let limit = match q.get("page[limit]") {
        None => SHARED_DOCS_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=SHARED_DOCS_MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::bad_request("page[limit] must be 1 to 1000"))?,
    };
    // Ids in the caller's space: ours for apps, the member's for its instance.
    let ids = crate::sharing::xor::IdMap::for_member(&s, member.unwrap_or(MemberIndex::OWNER));
    let after = q
        .get("page[cursor]")
        .map(|c| {
            c.split_once('/')
                .and_then(|(t, i)| Some((Doctype::parse(t).ok()?, DocId::parse(&ids.convert(i)).ok()?)))
                .ok_or_else(|| ApiError::bad_request("invalid page[cursor]"))
        })
        .transpose()?;
    let mut docs = inst.0.store.shared_docs(s.sharing_id(), after, limit + 1).await?;
    let more = docs.len() > limit;
    docs.truncate(limit);
    let data: Vec<Value> =
        docs.iter().map(|(t, i)| json!({"type": t.as_str(), "id": ids.convert(i.as_str())})).collect();
    let mut shared_docs = json!({"data": data});
    if let Some((t, i)) = docs.last().filter(|_| more) {
        let cursor = format!("{t}/{}", ids.convert(i.as_str()));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("page[cursor]", &cursor)
            .append_pair("page[limit]", &limit.to_string())
            .finish();
        shared_docs["links"] = json!({"next": format!("/sharings/{}?{query}", s.id())});
    }
    let mut out = doc(&s);
    out["data"]["relationships"] = json!({"shared_docs": shared_docs});
    Ok(jsonapi(StatusCode::OK, out))
}

/// `POST /sharings/:id/recipients` — more recipients. On the owner they are added; on a
/// recipient of an `open_sharing` they are forwarded to the owner's delegated route (see
/// `service::forward_recipients`) and the answer carries their invitation links in
/// `meta.invitations` (`[{"index", "invitation"}]`); on a recipient of a sharing that is not
/// open, 403. On the owner, `meta.recipients` says per recipient given (`recipients`, then
/// `read_only_recipients`) `{"index", "outcome"}`: `added`, `invited_again` (already invited
/// and not answered: the same invitation is sent again) or `already_member` (ready: nothing
/// changes); a person is never made a member twice.
pub(super) async fn add_recipients(
    inst: Inst,
    ManagedSharing { id, sharing: s }: ManagedSharing,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = json_body(&req, payload).await?;
    let cx = &state_of(&req)?.sharing;
    if !s.owner {
        let (s, links) = service::forward_recipients(cx, &inst.0, &id, &body).await?;
        let mut out = doc(&s);
        let links: Vec<Value> = links.into_iter().map(|(i, l)| json!({"index": i, "invitation": l})).collect();
        out["meta"] = json!({"invitations": links});
        return Ok(jsonapi(StatusCode::OK, out));
    }
    let (s, outcomes) = service::add_recipients(cx, &inst.0, &id, &body).await?;
    let mut out = doc(&s);
    let outcomes: Vec<Value> = outcomes.into_iter().map(|(i, o)| json!({"index": i, "outcome": o.as_str()})).collect();
    out["meta"] = json!({"recipients": outcomes});
    Ok(jsonapi(StatusCode::OK, out))
}

/// `DELETE /sharings/:id/recipients` — the owner revokes everyone.
pub(super) async fn revoke_all(
    inst: Inst,
    ManagedSharing { id, .. }: ManagedSharing,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let s = state_of(&req)?
        .sharing_write(&inst.0, |cx, inst| async move { service::revoke(&cx, &inst, &id, None).await })
        .await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

/// `DELETE /sharings/:id/recipients/:index` — the owner revokes one member.
pub(super) async fn revoke_one(
    inst: Inst,
    ManagedMember { id, index, .. }: ManagedMember,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let s = state_of(&req)?
        .sharing_write(&inst.0, |cx, inst| async move { service::revoke(&cx, &inst, &id, Some(index)).await })
        .await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

/// `DELETE /sharings/:id/recipients/self` — a recipient leaves.
pub(super) async fn leave(
    inst: Inst,
    ManagedSharing { id, .. }: ManagedSharing,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let s =
        state_of(&req)?.sharing_write(&inst.0, |cx, inst| async move { service::leave(&cx, &inst, &id).await }).await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

pub(super) async fn read_only(
    inst: Inst,
    caller: ManagedMember,
    req: HttpRequest,
    value: bool,
) -> ApiResult<HttpResponse> {
    let ManagedMember { id, index, .. } = caller;
    let s = state_of(&req)?
        .sharing_write(&inst.0, |cx, inst| async move { service::set_read_only(&cx, &inst, &id, index, value).await })
        .await?;
    Ok(jsonapi(StatusCode::OK, doc(&s)))
}

/// `POST /sharings/:id/recipients/:index/readonly` — the member becomes read-only.
pub(super) async fn add_read_only(inst: Inst, caller: ManagedMember, req: HttpRequest) -> ApiResult<HttpResponse> {
    read_only(inst, caller, req, true).await
}

/// `DELETE /sharings/:id/recipients/:index/readonly` — the member may write again.
pub(super) async fn remove_read_only(inst: Inst, caller: ManagedMember, req: HttpRequest) -> ApiResult<HttpResponse> {
    read_only(inst, caller, req, false).await
}

/// `GET /sharings/:id/status` — each member's status and, for the peers this instance
/// replicates to, `replication`: the state (`crate::sync::manager::LinkStatus`: `health` one of
/// `idle|healthy|degraded|retrying|down`, last error and success, progress, CouchDB's counters
/// `last_seq`, `docs_written`, `doc_write_failures`, `missing_revisions_found`, the documents
/// the member refused and has not written since, `refused_docs`, and `last_refusal` with its
/// reason) and `pending`, the changes past `last_seq`. For a sharing of files, each such member
/// also has `content` (`crate::sync::content::ContentStatus`: `files_pending`, `bytes_pending`
/// still to deliver to it, `files_sent`, `bytes_sent`, its content checkpoint `last_seq`,
/// `running`, `health`, `refused_files`, `last_error`); each such member has `health`, the
/// worse of its documents' and its content's (`Health::worst`: a member refusing file
/// content, or whose content has waited on the same files for
/// `replication.content_wait_max_ms`, is `degraded` even while its documents are all
/// accepted), and the sharing
/// `content_missing` (`files`, `bytes`): the files of
/// the sharing whose content has not arrived on this instance yet. Each member this instance
/// replicates with (or that sent it something refused) has `refused_received`
/// (`crate::sync::manager::ReceivedRefusals`: `docs`, `files` whose content is refused now,
/// 0 once the sharing ended or the member left,
/// `last` with `doc`, `reason`, `at`): what
/// this instance refused of what that member sent it (a read-only member's own edits, say),
/// since the server started. An active sharing this instance owns has `initial_set_pending`:
/// true while the documents that matched its rules when it started are still being added to
/// its feed, a part at a time (`pending` counts only those added so far).
pub(super) async fn status(inst: Inst, caller: ReadableSharing, req: HttpRequest) -> ApiResult<HttpResponse> {
    let ReadableSharing { id, sharing: s } = caller;
    let svc = state_of(&req)?;
    let targets = crate::sync::manager::targets(&s);
    // Files sharings: each member's content link, and what this instance still waits for.
    let files = if s.rules.iter().any(|r| r.doctype == crate::files::DOCTYPE) {
        Some(svc.files.of(&inst.0).await?)
    } else {
        None
    };
    let mut members = Vec::new();
    for (i, m) in s.members.iter().enumerate() {
        let member = MemberIndex(i);
        let mut entry = json!({"index": member, "status": m.status.as_str(), "read_only": m.read_only,
            "name": m.public_name.clone().or_else(|| m.name.clone()).or_else(|| m.email.clone())});
        let key = crate::sync::manager::PeerKey { domain: inst.0.domain.to_string(), sharing: id.to_string(), member };
        let mut received = svc.sync.received_refusals(&key);
        // Refused *now* only while that member may still send them: not once it left, was
        // revoked, or the sharing ended (the new-user review saw a revoked sharing still say
        // "refused here").
        if !s.active || m.status == crate::sharing::MemberStatus::Revoked {
            received.refused_files.clear();
        }
        if targets.contains(&member) || received.docs > 0 || !received.refused_files.is_empty() {
            entry["refused_received"] = serde_json::to_value(received).unwrap_or(Value::Null);
        }
        if targets.contains(&member) {
            let record = crate::sync::replication::read_link(&inst.0, id.as_str(), member).await?;
            let link = crate::sync::manager::LinkStatus::new(svc.sync.state(&key), record);
            let info = inst.0.store.shared_info(&id, link.last_seq).await?;
            let mut health = link.health;
            let mut rep = serde_json::to_value(link).unwrap_or(Value::Null);
            rep["pending"] = json!(info.pending);
            // What the run has to process: what it did and what is left (runs learn their
            // total as they read the feed).
            let total = rep["total"].as_u64().unwrap_or(0).max(rep["processed"].as_u64().unwrap_or(0) + info.pending);
            rep["total"] = json!(total);
            entry["replication"] = rep;
            if let Some(files) = &files {
                let content = svc.content.status(&inst.0, files, &s, member).await.map_err(sync_error)?;
                health = health.worst(content.health);
                entry["content"] = serde_json::to_value(content).unwrap_or(Value::Null);
            }
            entry["health"] = json!(health);
        }
        members.push(entry);
    }
    let info = inst.0.store.shared_info(&id, u64::MAX).await?;
    let mut attributes = json!({"owner": s.owner, "active": s.active, "documents": info.docs,
        "last_seq": info.last_seq, "members": members});
    if s.owner && s.active {
        attributes["initial_set_pending"] = json!(svc.sharing.tracking.initial_set_pending(&inst.0, &id));
    }
    if let Some(files) = &files {
        let (count, bytes) = crate::sync::content::missing_here(&inst.0, files, &id).await.map_err(sync_error)?;
        attributes["content_missing"] = json!({"files": count, "bytes": bytes});
    }
    Ok(jsonapi(
        StatusCode::OK,
        json!({"data": {"type": "io.cozy.sharings.status", "id": id.as_str(), "attributes": attributes}}),
    ))
}

pub(super) fn sync_error(e: crate::sync::replication::SyncError) -> ApiError {
    match e {
        crate::sync::replication::SyncError::Store(s) => s.into(),
        e => ApiError::Internal(e.into()),
    }
}

/// `POST /sharings/:id/sync` — replicate now (skipping any backoff); answers 202.
pub(super) async fn sync_now(
    inst: Inst,
    ManagedSharing { sharing: s, .. }: ManagedSharing,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    state_of(&req)?.sync.sync_now(inst.0.domain.as_str(), &s);
    Ok(HttpResponse::Accepted().json(json!({"ok": true})))
}

/// For `GET /sharings/`: the owner's link permissions (first page only) and the active
/// invitation links of the listed sharings it manages.
async fn included(
    inst: &Instance,
    perms: &PermissionSet,
    listed: &[Sharing],
    first_page: bool,
) -> ApiResult<Vec<Value>> {
    let mut out = if first_page { crate::http::permissions::covered_links(inst, perms).await? } else { Vec::new() };
    for s in listed.iter().filter(|s| s.owner && may_manage(perms, s)) {
        for inv in invitations::active_list(s) {
            out.push(serde_json::to_value(inv).map_err(|e| ApiError::Internal(e.into()))?);
        }
    }
    Ok(out)
}
