//! Invitation links (the DIAL model) across instances over real HTTP: seats taken atomically
//! by racing instances, expiry, revoking a link with and without its members, re-sharing by a
//! member with `share` (read-only, narrowing, counted against the original limit, revoked with
//! the member), previews, the owner's listings and `discard`.

mod common;

use common::{browser, eventually, spawn_app, TestApp, TestInstance};
use hearth::sharing::invitations::LIMIT_REACHED;
use hearth::sharing::{self, service, MemberStatus, Sharing, SharingId};
use reqwest::Method;
use serde_json::{json, Value};

const PASS: &str = "correct horse";

async fn create_sharing(owner: &TestInstance, token: &str, preview: Option<&str>, recipients: Value) -> String {
    let mut attributes = json!({"description": "holiday notes", "rules": [{"title": "Notes", "doctype": "io.cozy.notes",
        "values": ["n1"], "add": "sync", "update": "sync", "remove": "sync"}]});
    if let Some(p) = preview {
        attributes["preview_path"] = json!(p);
    }
    let body = json!({"data": {"type": "io.cozy.sharings", "attributes": attributes,
        "relationships": {"recipients": {"data": recipients}}}});
    let (s, v) = owner.call(Method::POST, "/sharings/", Some(token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["data"]["id"].as_str().unwrap().to_owned()
}

/// Creates an invitation link; answers (invitation id, link, full answer).
async fn new_link(inst: &TestInstance, token: &str, id: &str, body: Value) -> (String, String, Value) {
    let (s, v) = inst.call(Method::POST, &format!("/sharings/{id}/invitations"), Some(token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let link = v["data"]["attributes"]["link"].as_str().unwrap().to_owned();
    (v["data"]["id"].as_str().unwrap().to_owned(), link, v)
}

fn code_of(link: &str) -> String {
    link.split("invitation=").nth(1).unwrap().to_owned()
}

/// How many code index entries (`io.hearth.sharecodes`) the instance holds.
async fn code_entries(app: &TestApp, inst: &TestInstance) -> usize {
    let dt = hearth::store::Doctype::parse(hearth::sharing::links::CODES_DOCTYPE).unwrap();
    let q = hearth::store::AllDocsQuery { inclusive_end: true, ..Default::default() };
    app.instance(&inst.domain).store.all_docs(&dt, &q).await.unwrap().rows.len()
}

async fn load(app: &TestApp, inst: &TestInstance, id: &str) -> Sharing {
    sharing::load(app.instance(&inst.domain).store.as_ref(), &SharingId::parse(id).unwrap()).await.unwrap().unwrap()
}

/// `POST /sharings/:id/discovery` with an invitation code, as a script would (JSON answer).
async fn discover(owner: &TestInstance, id: &str, code: &str, recipient: &TestInstance) -> (u16, Value) {
    let resp = browser()
        .post(owner.url(&format!("/sharings/{id}/discovery")))
        .header("Accept", "application/json")
        .form(&[("invitation", code), ("url", &format!("http://{}", recipient.domain))])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null))
}

/// The recipient's owner presses Accept (the service call the acceptance page makes).
async fn accept(app: &TestApp, recipient: &TestInstance, id: &str, redirect: &str) {
    let url = url::Url::parse(redirect).unwrap();
    let state = url.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    common::flow::accept_request(app, recipient, id, &state).await;
}

/// Discovery then acceptance; answers the member's index on the owner.
async fn join(
    owner_app: &TestApp,
    owner: &TestInstance,
    app: &TestApp,
    r: &TestInstance,
    id: &str,
    code: &str,
) -> usize {
    let (s, v) = discover(owner, id, code, r).await;
    assert_eq!(s, 200, "{v}");
    accept(app, r, id, v["redirect"].as_str().unwrap()).await;
    let s = load(owner_app, owner, id).await;
    let me = format!("http://{}", r.domain);
    s.members.iter().rposition(|m| m.instance.as_deref() == Some(me.as_str())).unwrap()
}

use common::flow::hidden;

/// A person in a browser: opens the link, types their address, logs in on their instance and
/// presses Accept. `form` are the hidden fields the discovery page must carry.
async fn accept_in_browser(b: &reqwest::Client, link: &str, form_fields: &[&str], recipient: &TestInstance) -> String {
    let page = b.get(link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"url\""), "{html}");
    let action = format!("{}{}", link.split("/sharings/").next().unwrap(), hidden_action(&html));
    let mut form: Vec<(String, String)> = form_fields.iter().map(|f| (f.to_string(), hidden(&html, f))).collect();
    form.push(("url".into(), format!("http://{}", recipient.domain)));
    let resp = b.post(&action).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 302, "{}", resp.text().await.unwrap());
    let authorize = resp.headers()["location"].to_str().unwrap().to_owned();
    let html = common::flow::log_in_and_open(b, recipient, &authorize).await;
    let form = [
        ("sharing_id", hidden(&html, "sharing_id")),
        ("state", hidden(&html, "state")),
        ("csrf_token", hidden(&html, "csrf_token")),
        ("action", "accept".to_owned()),
        ("digest", hidden(&html, "digest")),
    ];
    let done = b.post(format!("http://{}/auth/authorize/sharing", recipient.domain)).form(&form).send().await.unwrap();
    assert_eq!(done.status(), 200);
    done.text().await.unwrap()
}

fn hidden_action(html: &str) -> String {
    let marker = "action=\"";
    let start = html.find(marker).unwrap() + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_three_racing_instances_take_the_last_two_seats_every_time() {
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let recipients: Vec<TestInstance> = ["bob", "carol", "dave"].iter().map(|n| two.add_instance(n, PASS)).collect();
    let token = one.token(&alice, "io.cozy.notes");
    for run in 0..20 {
        let id = create_sharing(&alice, &token, None, json!([])).await;
        let (inv, link, _) =
            new_link(&alice, &token, &id, json!({"permissions": ["read"], "max_accepted_users": 2})).await;
        let code = code_of(&link);
        let outcomes = futures_util::future::join_all(recipients.iter().map(|r| {
            let (alice, two, id, code) = (&alice, &two, &id, &code);
            async move {
                let (s, v) = discover(alice, id, code, r).await;
                if s == 200 {
                    accept(two, r, id, v["redirect"].as_str().unwrap()).await;
                }
                (s, v)
            }
        }))
        .await;
        let won = outcomes.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(won, 2, "run {run}: {outcomes:?}");
        let (s, lost) = outcomes.iter().find(|(s, _)| *s != 200).unwrap();
        assert_eq!(*s, 400, "run {run}: {lost}");
        assert_eq!(lost["reason"], LIMIT_REACHED);
        let s = load(&one, &alice, &id).await;
        let from_link: Vec<_> = s.members.iter().filter(|m| m.invitation.as_deref() == Some(inv.as_str())).collect();
        assert_eq!(from_link.len(), 2, "run {run}: no member for the loser");
        assert!(from_link.iter().all(|m| m.status == MemberStatus::Ready && m.read_only));
        let (_, list) = alice.call(Method::GET, &format!("/sharings/{id}/invitations"), Some(&token), None).await;
        assert_eq!(list["data"][0]["attributes"]["accepted"], 2, "{list}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_use_of_a_link_makes_its_own_member_with_the_links_permissions() {
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let carol = two.add_instance("carol", PASS);
    let token = one.token(&alice, "io.cozy.notes");
    let id = create_sharing(&alice, &token, None, json!([])).await;
    let (inv, link, created) = new_link(&alice, &token, &id, json!({"permissions": ["write"]})).await;
    assert!(link.starts_with(&format!("http://{}/sharings/{id}/discovery?invitation=", alice.domain)), "{link}");
    assert_eq!(created["data"]["attributes"]["permissions"], json!(["write"]));
    let code = code_of(&link);

    // Bob, in a browser, through the discovery page.
    let done = accept_in_browser(&browser(), &link, &["invitation"], &bob).await;
    assert!(done.contains("You accepted"), "{done}");
    let s = load(&one, &alice, &id).await;
    assert_eq!(s.members.len(), 2);
    let b = &s.members[1];
    assert_eq!((b.status, b.read_only, b.invitation.as_deref()), (MemberStatus::Ready, false, Some(inv.as_str())));
    assert!(load(&two, &bob, &id).await.active);
    let bob_token = load(&two, &bob, &id).await.members[0].outbound.clone().unwrap().access_token;
    let claims = one.instance(&alice.domain).keys.verify(&bob_token, &[hearth::auth::Audience::Access]).unwrap();
    assert_eq!(claims.scope.unwrap(), format!("io.cozy.sharings:ALL:{id}"), "write link: a writing member");

    // Whoever holds the link sees what it offers.
    let (s, details) = alice.call(Method::GET, &format!("/invitations/{code}"), None, None).await;
    assert_eq!(s, 200, "{details}");
    assert_eq!(details["data"]["attributes"]["description"], "holiday notes");
    assert_eq!(details["data"]["attributes"]["accepted"], 1);
    assert!(!details.to_string().contains(&code));
    assert_eq!(alice.call(Method::GET, "/invitations/0123456789abcdef", None, None).await.0, 404);

    // Carol makes her own member; bob cannot take a second seat.
    let carol_index = join(&one, &alice, &two, &carol, &id, &code).await;
    assert_eq!(carol_index, 2);
    let (s, v) = discover(&alice, &id, &code, &bob).await;
    assert_eq!(s, 409, "{v}");
    let (_, list) = alice.call(Method::GET, &format!("/sharings/{id}/invitations"), Some(&token), None).await;
    assert_eq!(list["data"][0]["attributes"]["accepted"], 2);
    assert!(!list.to_string().contains(&code), "the link is shown once");

    // Each member is revocable on its own.
    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{id}/recipients/2"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    let s = load(&one, &alice, &id).await;
    assert_eq!((s.members[1].status, s.members[2].status), (MemberStatus::Ready, MemberStatus::Revoked));
    // Members of the sharing cannot manage its links.
    assert_eq!(alice.call(Method::GET, &format!("/sharings/{id}/invitations"), Some(&bob_token), None).await.0, 403);
}

#[tokio::test]
async fn invitation_requests_are_validated_and_links_expire() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = one.add_instance("bob", PASS);
    let token = one.token(&alice, "io.cozy.notes");
    let id = create_sharing(&alice, &token, None, json!([])).await;
    for (body, want) in [
        (json!({"permissions": ["share"]}), "READ is allowed for re-sharing only"),
        (json!({"permissions": []}), "permissions"),
        (json!({"permissions": ["admin"]}), "permissions"),
        (json!({"permissions": ["read"], "max_accepted_users": 0}), "max_accepted_users"),
        (json!({"permissions": ["read"], "expires_in": 0}), "expires_in"),
        (json!({"permissions": "read"}), "permissions"),
    ] {
        let (s, v) =
            alice.call(Method::POST, &format!("/sharings/{id}/invitations"), Some(&token), Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v["reason"].as_str().unwrap().contains(want), "{body}: {v}");
    }
    assert_eq!(
        alice
            .call(Method::POST, &format!("/sharings/{id}/invitations"), None, Some(json!({"permissions": ["read"]})))
            .await
            .0,
        401
    );
    let other = one.token(&alice, "io.cozy.todos");
    assert_eq!(
        alice
            .call(
                Method::POST,
                &format!("/sharings/{id}/invitations"),
                Some(&other),
                Some(json!({"permissions": ["read"]}))
            )
            .await
            .0,
        403
    );
    // Credentials are judged before the body is read: without a token, a malformed body gets
    // the 401, not a 400 that would tell an anonymous caller how its body was read.
    let http = browser();
    for token in [None, Some(other.as_str())] {
        let mut post = http.post(alice.url(&format!("/sharings/{id}/invitations"))).body("{not json");
        if let Some(t) = token {
            post = post.bearer_auth(t);
        }
        let status = post.send().await.unwrap().status();
        assert_eq!(status, if token.is_some() { 403 } else { 401 }, "{token:?}");
    }

    // The default lifetime is 72 hours.
    let (_, _, v) = new_link(&alice, &token, &id, json!({"permissions": ["read"]})).await;
    let at = time::OffsetDateTime::parse(
        v["data"]["attributes"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expected = time::OffsetDateTime::now_utc() + time::Duration::hours(72);
    assert!((at - expected).abs() < time::Duration::minutes(1), "{at}");

    let (_, link, _) = new_link(&alice, &token, &id, json!({"permissions": ["read"], "expires_in": 1})).await;
    let code = code_of(&link);
    assert_eq!(alice.call(Method::GET, &format!("/invitations/{code}"), None, None).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, v) = discover(&alice, &id, &code, &bob).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(alice.call(Method::GET, &format!("/invitations/{code}"), None, None).await.0, 404);
    let page = browser().get(&link).send().await.unwrap();
    assert_eq!(page.status(), 403);
    let (_, list) = alice.call(Method::GET, &format!("/sharings/{id}/invitations"), Some(&token), None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "only the 72-hour link is active: {list}");
    assert_eq!(load(&one, &alice, &id).await.members.len(), 1, "no member was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_link_keeps_its_members_unless_asked() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol, dave] = ["bob", "carol", "dave"].map(|n| one.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.notes");
    let id = create_sharing(&alice, &token, None, json!([])).await;
    let (inv1, link1, _) = new_link(&alice, &token, &id, json!({"permissions": ["read"]})).await;
    let (inv2, link2, _) = new_link(&alice, &token, &id, json!({"permissions": ["read"]})).await;
    let bob_index = join(&one, &alice, &one, &bob, &id, &code_of(&link1)).await;
    let carol_index = join(&one, &alice, &one, &carol, &id, &code_of(&link2)).await;
    // Dave started with link 2 but did not accept yet.
    let (s, pending) = discover(&alice, &id, &code_of(&link2), &dave).await;
    assert_eq!(s, 200, "{pending}");

    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{id}/invitations/{inv1}"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(load(&one, &alice, &id).await.members[bob_index].status, MemberStatus::Ready, "bob stays");
    assert_eq!(discover(&alice, &id, &code_of(&link1), &dave).await.0, 403, "the link is dead");

    let carol_peer = load(&one, &carol, &id).await.members[0].outbound.clone().unwrap().access_token;
    let (s, v) = alice
        .call(Method::DELETE, &format!("/sharings/{id}/invitations/{inv2}?revoke_members=true"), Some(&token), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let s = load(&one, &alice, &id).await;
    assert_eq!(s.members[carol_index].status, MemberStatus::Revoked, "carol goes with the link");
    assert_eq!(s.members[bob_index].status, MemberStatus::Ready);
    let dave_index =
        s.members.iter().position(|m| m.instance.as_deref() == Some(&format!("http://{}", dave.domain))).unwrap();
    assert_eq!(s.members[dave_index].status, MemberStatus::Revoked, "a pending acceptance is revoked with the link");
    assert_eq!(alice.call(Method::GET, &format!("/sharings/{id}"), Some(&carol_peer), None).await.0, 401);
    eventually(10, "carol learns the revocation", || async { !load(&one, &carol, &id).await.active }).await;
    // Dave's late acceptance fails and changes nothing.
    let url = url::Url::parse(pending["redirect"].as_str().unwrap()).unwrap();
    let state = url.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let dave_inst = one.instance(&dave.domain);
    let sid = SharingId::parse(&id).unwrap();
    let digest = hearth::sharing::request::digest(&load(&one, &dave, &id).await, hearth::sharing::MemberIndex(1));
    assert!(service::accept(&one.sharing, &dave_inst, &sid, &state, &digest).await.is_err());
    let (_, list) = alice.call(Method::GET, &format!("/sharings/{id}/invitations"), Some(&token), None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    assert_eq!(
        alice.call(Method::DELETE, &format!("/sharings/{id}/invitations/nope"), Some(&token), None).await.0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_member_re_shares_read_only_and_its_links_die_with_it() {
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol, dave, erin] = ["bob", "carol", "dave", "erin"].map(|n| two.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.notes");
    let id = create_sharing(&alice, &token, None, json!([])).await;
    let (_, l1, v1) = new_link(
        &alice,
        &token,
        &id,
        json!({"permissions": ["write", "share"], "max_accepted_users": 2, "expires_in": 3600}),
    )
    .await;
    let parent_expiry = v1["data"]["attributes"]["expires_at"].as_str().unwrap().to_owned();
    let bob_index = join(&one, &alice, &two, &bob, &id, &code_of(&l1)).await;

    // Bob's app asks bob's instance, which asks alice with bob's credentials.
    let bob_app = two.token(&bob, "io.cozy.notes");
    let url = format!("/sharings/{id}/invitations");
    let (s, v) = bob.call(Method::POST, &url, Some(&bob_app), Some(json!({"permissions": ["write"]}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("READ is allowed for re-sharing only"), "{v}");
    let (s, v) = bob.call(Method::POST, &url, Some(&bob_app), Some(json!({"permissions": ["read", "share"]}))).await;
    assert_eq!(s, 400, "{v}");
    let (inv2, l2, v2) = new_link(&bob, &bob_app, &id, json!({"permissions": ["read"], "expires_in": 7200})).await;
    assert!(l2.starts_with(&format!("http://{}/sharings/{id}/discovery?invitation=", alice.domain)), "{l2}");
    assert_eq!(v2["data"]["attributes"]["expires_at"], parent_expiry.as_str(), "never outlives the parent link");
    assert_eq!(v2["data"]["attributes"]["parent"], v1["data"]["id"]);

    let carol_index = join(&one, &alice, &two, &carol, &id, &code_of(&l2)).await;
    let s = load(&one, &alice, &id).await;
    let c = &s.members[carol_index];
    assert_eq!(
        (c.status, c.read_only, c.added_by),
        (MemberStatus::Ready, true, Some(hearth::sharing::MemberIndex(bob_index)))
    );
    assert_eq!(c.invitation.as_deref(), Some(inv2.as_str()));
    // Re-shares count against the original limit: bob + carol use the two seats.
    let (s, v) = discover(&alice, &id, &code_of(&l2), &dave).await;
    assert_eq!((s, v["reason"].as_str()), (400, Some(LIMIT_REACHED)), "{v}");
    assert_eq!(discover(&alice, &id, &code_of(&l1), &dave).await.0, 400);

    // A member who joined without SHARE cannot re-share; neither can a re-shared member.
    let (_, l3, _) = new_link(&alice, &token, &id, json!({"permissions": ["read"]})).await;
    join(&one, &alice, &two, &erin, &id, &code_of(&l3)).await;
    let erin_app = two.token(&erin, "io.cozy.notes");
    let codes_before = code_entries(&one, &alice).await;
    for _ in 0..5 {
        let (s, v) = erin.call(Method::POST, &url, Some(&erin_app), Some(json!({"permissions": ["read"]}))).await;
        assert_eq!(s, 400, "{v}");
    }
    let carol_app = two.token(&carol, "io.cozy.notes");
    assert_eq!(carol.call(Method::POST, &url, Some(&carol_app), Some(json!({"permissions": ["read"]}))).await.0, 400);
    assert_eq!(code_entries(&one, &alice).await, codes_before, "a refused request leaves nothing on the owner");
    // The peer route itself, with bob's access token on alice.
    let bob_peer = load(&two, &bob, &id).await.members[0].outbound.clone().unwrap().access_token;
    let (s, v) = alice.call(Method::POST, &url, Some(&bob_peer), Some(json!({"permissions": ["read"]}))).await;
    assert_eq!(s, 201, "{v}");
    let l4 = v["data"]["attributes"]["link"].as_str().unwrap().to_owned();

    // Revoking bob revokes the links bob made (members who joined through them stay).
    let (s, v) =
        alice.call(Method::DELETE, &format!("/sharings/{id}/recipients/{bob_index}"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    for l in [&l2, &l4] {
        assert_eq!(alice.call(Method::GET, &format!("/invitations/{}", code_of(l)), None, None).await.0, 404);
        assert_eq!(discover(&alice, &id, &code_of(l), &dave).await.0, 403);
    }
    let s = load(&one, &alice, &id).await;
    assert_eq!(s.members[carol_index].status, MemberStatus::Ready);
    let (_, list) = alice.call(Method::GET, &url, Some(&token), None).await;
    let active = list["data"].as_array().unwrap();
    assert_eq!(active.len(), 2, "the owner's two links stay: {list}");
    assert!(active.iter().all(|i| i["attributes"]["created_by"] == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_code_shows_the_sharing_and_moves_the_member_to_seen() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = one.add_instance("bob", PASS);
    let token = one.token(&alice, "io.cozy.notes");
    for (id, title) in [("n1", "Groceries"), ("n2", "Diary")] {
        alice
            .call(Method::PUT, &format!("/data/io.cozy.notes/{id}"), Some(&token), Some(json!({"title": title})))
            .await;
    }
    let id = create_sharing(&alice, &token, Some("/preview"), json!([{"email": "bob@example.net"}])).await;
    let inst = one.instance(&alice.domain);
    let s = load(&one, &alice, &id).await;
    let link = service::invitation_link(&one.sharing, &inst, &s, hearth::sharing::MemberIndex(1)).unwrap();
    let prefix = format!("http://{}/public/preview?sharecode=", alice.domain);
    assert!(link.starts_with(&prefix), "{link}");
    let code = link[prefix.len()..].to_owned();
    assert_eq!(s.members[1].status, MemberStatus::MailNotSent);

    let b = browser();
    let resp = b.get(&link).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "/public/preview");
    assert_eq!(load(&one, &alice, &id).await.members[1].status, MemberStatus::Seen, "using the code");
    let html = b.get(alice.url("/public/preview")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("holiday notes") && html.contains("Groceries") && !html.contains("Diary"), "{html}");
    assert!(html.contains(&format!("/sharings/{id}/discovery")));
    assert_eq!(b.get(alice.url("/data/io.cozy.notes/n1")).send().await.unwrap().status(), 200);
    assert_eq!(b.get(alice.url("/data/io.cozy.notes/n2")).send().await.unwrap().status(), 403);
    let (s, me) = alice.call(Method::GET, "/permissions/self", Some(&code), None).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["data"]["attributes"]["type"], "share-preview");
    assert_eq!(me["data"]["attributes"]["source_id"], format!("io.cozy.sharings/{id}"));
    assert_eq!(me["included"][0]["attributes"]["status"], "seen");
    assert_eq!(alice.call(Method::PUT, "/data/io.cozy.notes/n1", Some(&code), Some(json!({"t": 1}))).await.0, 403);

    // From the preview to the discovery: the cookie names the member, no secret in the page.
    let page = b.get(alice.url(&format!("/sharings/{id}/discovery"))).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains("name=\"state\"") && !html.contains(&code), "{html}");
    let forged = b
        .post(alice.url(&format!("/sharings/{id}/discovery")))
        .header("Origin", "http://evil.localhost")
        .form(&[("url", format!("http://{}", bob.domain))])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "cross-site forms are refused");
    let resp = b
        .post(alice.url(&format!("/sharings/{id}/discovery")))
        .header("Accept", "application/json")
        .form(&[("url", format!("http://{}", bob.domain))])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let redirect: Value = resp.json().await.unwrap();
    accept(&one, &bob, &id, redirect["redirect"].as_str().unwrap()).await;
    assert_eq!(load(&one, &alice, &id).await.members[1].status, MemberStatus::Ready);

    // A revoked member's preview stops.
    alice.call(Method::DELETE, &format!("/sharings/{id}/recipients/1"), Some(&token), None).await;
    assert_eq!(alice.call(Method::GET, "/permissions/self", Some(&code), None).await.0, 401);
    assert_eq!(b.get(alice.url("/data/io.cozy.notes/n1")).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_links_and_invitations_and_recipients_discard() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol] = ["bob", "carol"].map(|n| one.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.notes");
    let id = create_sharing(&alice, &token, None, json!([])).await;
    let (inv, link, _) = new_link(&alice, &token, &id, json!({"permissions": ["read"]})).await;
    let body = json!({"data": {"type": "io.cozy.permissions", "attributes": {"permissions": {"n": {"type": "io.cozy.notes", "verbs": ["GET"], "values": ["n1"]}}}}});
    let (s, created) = alice.call(Method::POST, "/permissions?codes=friends", Some(&token), Some(body)).await;
    assert_eq!(s, 200);
    let sharecode = created["data"]["attributes"]["codes"]["friends"].as_str().unwrap().to_owned();

    let (s, out) = alice.call(Method::GET, "/sharings/?direction=outgoing", Some(&token), None).await;
    assert_eq!(s, 200, "{out}");
    let included = out["included"].as_array().unwrap();
    assert!(included.iter().any(|i| i["type"] == "io.cozy.permissions" && i["id"] == created["data"]["id"]), "{out}");
    assert!(included.iter().any(|i| i["type"] == "io.hearth.invitations" && i["id"] == inv.as_str()), "{out}");
    let text = out.to_string();
    assert!(!text.contains(&sharecode) && !text.contains(&code_of(&link)), "lists never show codes");
    let (_, incoming) = alice.call(Method::GET, "/sharings/?direction=incoming", Some(&token), None).await;
    assert!(incoming.get("included").is_none());

    // Bob starts but does not accept, then discards the request.
    let (s, _) = discover(&alice, &id, &code_of(&link), &bob).await;
    assert_eq!(s, 200);
    let bob_app = one.token(&bob, "io.cozy.notes");
    let (_, inbox) = bob.call(Method::GET, "/sharings/?direction=incoming", Some(&bob_app), None).await;
    assert_eq!(inbox["data"].as_array().unwrap().len(), 1);
    let (s, v) = bob.call(Method::POST, &format!("/sharings/{id}/discard"), Some(&bob_app), None).await;
    assert_eq!(s, 200, "{v}");
    let bob_side = load(&one, &bob, &id).await;
    assert!(!bob_side.active && bob_side.members.iter().skip(1).all(|m| m.status == MemberStatus::Refused));
    // Carol accepts, then discards: she leaves, and alice learns it.
    let carol_index = join(&one, &alice, &one, &carol, &id, &code_of(&link)).await;
    let carol_app = one.token(&carol, "io.cozy.notes");
    let (s, v) = carol.call(Method::POST, &format!("/sharings/{id}/discard"), Some(&carol_app), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(!load(&one, &carol, &id).await.active);
    eventually(10, "alice sees carol leave", || async {
        load(&one, &alice, &id).await.members[carol_index].status == MemberStatus::Revoked
    })
    .await;
    assert_eq!(alice.call(Method::POST, &format!("/sharings/{id}/discard"), Some(&token), None).await.0, 400);
}

#[tokio::test]
async fn discarding_a_request_tells_the_owner_and_frees_its_seat() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol] = ["bob", "carol"].map(|n| one.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.notes");
    let id = create_sharing(&alice, &token, None, json!([])).await;
    let (_, link, _) = new_link(&alice, &token, &id, json!({"permissions": ["read"], "max_accepted_users": 1})).await;
    let (s, _) = discover(&alice, &id, &code_of(&link), &bob).await;
    assert_eq!(s, 200);
    // Bob's request holds the only seat.
    let (s, v) = discover(&alice, &id, &code_of(&link), &carol).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["reason"], "The limit of maximum accepted invites is reached");

    let bob_app = one.token(&bob, "io.cozy.notes");
    let (s, v) = bob.call(Method::POST, &format!("/sharings/{id}/discard"), Some(&bob_app), None).await;
    assert_eq!(s, 200, "{v}");
    let owner_side = load(&one, &alice, &id).await;
    let bob_index =
        owner_side.members.iter().position(|m| m.instance.as_deref() == Some(&format!("http://{}", bob.domain)));
    assert_eq!(owner_side.members[bob_index.expect("bob is a member")].status, MemberStatus::Refused);
    let (s, v) = discover(&alice, &id, &code_of(&link), &carol).await;
    assert_eq!(s, 200, "the seat is free again: {v}");
}
