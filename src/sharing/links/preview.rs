//! Preview codes (`share-preview`): not stored, derived per member of a sharing with a
//! `preview_path` (see the module docs of `sharing::links`): the code, the preview page and
//! link an invitation carries, and what a presented preview code gives.

use serde_json::json;

use super::{set_to_api, Grant, KIND_PREVIEW, PERMISSIONS_DOCTYPE, PREVIEW_PREFIX};
use crate::auth::PermissionSet;
use crate::instance::Instance;
use crate::sharing::model::{MemberIndex, MemberStatus, Sharing, SharingId};
use crate::sharing::{load, update, Context, Result};

/// The preview code of member `index`, when the sharing has a preview path (owner side).
pub fn preview_code(inst: &Instance, s: &Sharing, index: MemberIndex) -> Option<String> {
    if !s.owner || s.preview_path.is_none() || index.is_owner() {
        return None;
    }
    let nonce = s.member(index)?.state_nonce.as_deref()?;
    let mac = inst.derive_secret("sharing-preview", &[s.id(), nonce]);
    Some(format!("{PREVIEW_PREFIX}{}_{mac}", s.id()))
}

/// The public path of a sharing's preview page: `/public<preview_path>`.
pub fn preview_page_path(s: &Sharing) -> Option<String> {
    let p = s.preview_path.as_deref()?.trim();
    let p = p.split(['?', '#']).next().unwrap_or_default();
    Some(if p.starts_with('/') { format!("/public{p}") } else { format!("/public/{p}") })
}

/// The invitation link of a member of a sharing with a preview path: its preview page with its
/// preview code.
pub fn preview_link(cx: &Context, inst: &Instance, s: &Sharing, index: MemberIndex) -> Option<String> {
    let code = preview_code(inst, s, index)?;
    let path = preview_page_path(s)?;
    Some(format!("{}{path}?sharecode={code}", cx.federation.instance_url(inst.domain.as_str())))
}

fn preview_set(s: &Sharing) -> PermissionSet {
    let rules = s
        .rules
        .iter()
        .filter(|r| r.selector.is_none())
        .filter_map(|r| {
            let mut set = PermissionSet::parse(&format!("{}:GET", r.doctype)).ok()?;
            let mut rule = set.rules.pop()?;
            rule.values = r.values.clone();
            Some(rule)
        })
        .collect();
    PermissionSet { rules }
}

pub(super) async fn resolve_preview(inst: &Instance, code: &str) -> Result<Option<Grant>> {
    let Some((sid, _)) = code.strip_prefix(PREVIEW_PREFIX).and_then(|r| r.rsplit_once('_')) else {
        return Ok(None);
    };
    let Ok(sid) = SharingId::parse(sid) else {
        return Ok(None);
    };
    // A revoked sharing's preview codes all end with it.
    let Some(s) = load(inst.store.as_ref(), &sid).await?.filter(|s| s.owner && !s.is_revoked()) else {
        return Ok(None);
    };
    let mut found = None;
    for i in s.recipient_indexes() {
        if preview_code(inst, &s, i).is_some_and(|expected| Instance::secrets_match(code, &expected)) {
            found = Some(i);
        }
    }
    let Some(index) = found else {
        return Ok(None);
    };
    let status = s.members[index].status;
    if matches!(status, MemberStatus::Revoked | MemberStatus::Refused) {
        return Ok(None);
    }
    let s = if matches!(status, MemberStatus::MailNotSent | MemberStatus::Pending) {
        // The first use of the code means the member saw the invitation.
        let (_, s) = update(inst.store.as_ref(), &sid, |s| {
            if let Some(m) = s.member_mut(index) {
                if matches!(m.status, MemberStatus::MailNotSent | MemberStatus::Pending) {
                    m.status = MemberStatus::Seen;
                }
            }
            Ok(())
        })
        .await?;
        tracing::info!(instance = %inst.domain, sharing = %sid, member = index.get(), "preview seen");
        s
    } else {
        s
    };
    let set = preview_set(&s);
    let perm_id = format!("share-preview-{sid}");
    let member = &s.members[index];
    let view = json!({
        "type": PERMISSIONS_DOCTYPE,
        "id": perm_id,
        "attributes": {
            "type": KIND_PREVIEW,
            "source_id": format!("{}/{sid}", crate::sharing::SHARINGS_DOCTYPE),
            "permissions": set_to_api(&set),
            "password": false,
        },
        "included": [{
            "type": "io.cozy.sharings.members",
            "id": index.to_string(),
            "attributes": {"status": member.status.as_str(), "name": member.name.as_ref().or(member.public_name.as_ref()), "email": member.email},
        }],
    });
    Ok(Some(Grant { perm_id, set, password_hash: None, member: Some((sid, index)), view }))
}
