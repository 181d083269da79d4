//! OAuth clients standing for peer instances. When two instances set up a sharing, each creates
//! a client for the other and gives it an access token (short-lived) and a refresh token; the
//! client record (doctype `io.cozy.oauth.clients`) holds the hash of its secret, the sharing
//! and member it stands for, and its scope. A token is honoured only while its client exists,
//! so deleting the client revokes every token it was given, at once.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{random_hex, secrets_match, Audience, Authority, PermissionSet};
use crate::store::{json, DocId, Doctype, MemberIndex, StoreError};

pub const CLIENTS_DOCTYPE: &str = "io.cozy.oauth.clients";

fn clients() -> Doctype {
    Doctype::parse(CLIENTS_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OAuthClient {
    #[serde(skip)]
    pub id: String,
    pub client_name: String,
    pub client_kind: String,
    secret_hash: String,
    pub sharing_id: String,
    pub member_index: MemberIndex,
    pub scope: String,
}

/// A freshly created client with its secrets, to hand to the peer once.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IssuedClient {
    pub client_id: String,
    pub client_secret: String,
    pub access_token: String,
    pub refresh_token: String,
    pub scope: String,
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl OAuthClient {
    pub fn permissions(&self) -> Option<PermissionSet> {
        PermissionSet::parse(&self.scope).ok()
    }

    pub fn secret_matches(&self, presented: &str) -> bool {
        secrets_match(&hash_secret(presented), &self.secret_hash)
    }
}

/// Creates a client for the peer that is member `member_index` of `sharing_id` (0 = the owner,
/// on a recipient), with `scope`, and issues its first tokens.
pub async fn create_sharing_client(
    inst: &dyn Authority,
    sharing_id: &str,
    member_index: MemberIndex,
    scope: &PermissionSet,
    name: &str,
    access_ttl_secs: u64,
) -> Result<IssuedClient, StoreError> {
    let client_id = random_hex(16);
    let secret = random_hex(32);
    let client = OAuthClient {
        id: client_id.clone(),
        client_name: name.chars().take(200).collect(),
        client_kind: "sharing".into(),
        secret_hash: hash_secret(&secret),
        sharing_id: sharing_id.to_owned(),
        member_index,
        scope: scope.to_string(),
    };
    let body = match serde_json::to_value(&client) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let id = DocId::parse(&client_id).map_err(StoreError::Corrupt)?;
    json::put(inst.store(), &clients(), &id, None, body).await?;
    Ok(IssuedClient {
        access_token: issue_access(inst, &client, access_ttl_secs),
        refresh_token: inst.keys().issue(
            Audience::Refresh,
            &client_id,
            100 * 365 * 24 * 3600,
            Some(scope),
            Some(&client_id),
        ),
        client_id,
        client_secret: secret,
        scope: scope.to_string(),
    })
}

pub fn issue_access(inst: &dyn Authority, client: &OAuthClient, ttl_secs: u64) -> String {
    let scope = client.permissions();
    inst.keys().issue(Audience::Access, &client.id, ttl_secs, scope.as_ref(), Some(&client.id))
}

pub async fn find_client(inst: &dyn Authority, client_id: &str) -> Result<Option<OAuthClient>, StoreError> {
    let Ok(id) = DocId::parse(client_id) else {
        return Ok(None);
    };
    let Some(rec) = json::get(inst.store(), &clients(), &id).await? else {
        return Ok(None);
    };
    let mut client: OAuthClient = serde_json::from_value(Value::Object(rec.body))
        .map_err(|_| StoreError::Corrupt(format!("oauth client {client_id}")))?;
    client.id = client_id.to_owned();
    Ok(Some(client))
}

/// Deletes a client: every token it holds stops working now. Deleting a missing client is fine.
pub async fn delete_client(inst: &dyn Authority, client_id: &str) -> Result<(), StoreError> {
    let Ok(id) = DocId::parse(client_id) else {
        return Ok(());
    };
    for _ in 0..5 {
        let Some(rec) = json::get(inst.store(), &clients(), &id).await? else {
            return Ok(());
        };
        match json::delete(inst.store(), &clients(), &id, &rec.rev).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// The client a token was issued to, when the token is a valid access token of this instance
/// and its client still exists.
pub async fn client_of_access_token(inst: &dyn Authority, token: &str) -> Result<Option<OAuthClient>, StoreError> {
    let Some(claims) = inst.keys().verify(token, &[Audience::Access]) else {
        return Ok(None);
    };
    let Some(client_id) = claims.client_id.filter(|c| *c == claims.sub) else {
        return Ok(None);
    };
    find_client(inst, &client_id).await
}

/// `grant_type=refresh_token`: checks the refresh token, the client and its secret, and issues
/// a new access token. `None` for anything invalid (the caller answers 400 `invalid_grant`).
pub async fn refresh(
    inst: &dyn Authority,
    client_id: &str,
    client_secret: &str,
    refresh_token: &str,
    ttl_secs: u64,
) -> Result<Option<(OAuthClient, String)>, StoreError> {
    let Some(claims) = inst.keys().verify(refresh_token, &[Audience::Refresh]) else {
        return Ok(None);
    };
    if claims.sub != client_id || claims.client_id.as_deref() != Some(client_id) {
        return Ok(None);
    }
    let Some(client) = find_client(inst, client_id).await? else {
        return Ok(None);
    };
    if !client.secret_matches(client_secret) {
        return Ok(None);
    }
    let token = issue_access(inst, &client, ttl_secs);
    Ok(Some((client, token)))
}
