use super::*;
use crate::destination::{DestinationType, DestinationsFile};
use serde_json::json;

fn spec(t: &str, extra: &str) -> DestinationSpec {
    let yaml = format!(
        "destinations:\n  - key: dest\n    name: My Hook\n    type: {t}\n    url: http://h/base\n{extra}"
    );
    DestinationsFile::from_yaml(&yaml)
        .unwrap()
        .destinations
        .remove(0)
}

fn id(t: &str, v: &str) -> ExternalId {
    ExternalId {
        id_type: t.into(),
        id: v.into(),
        collection: Some("users".into()),
    }
}

fn change(kind: ChangeKind, ids: Vec<ExternalId>) -> Change {
    Change {
        space_id: "spa_1".into(),
        profile_id: "prof_1".into(),
        key: if matches!(kind, ChangeKind::TraitComputed(_)) {
            "total_revenue_180_days".into()
        } else {
            "first_time_shopper".into()
        },
        version: Some(3),
        kind,
        external_ids: ids,
        changed_at_ms: 1_700_000_000_123,
    }
}

fn personas(class: &str, key: &str) -> Json {
    json!({"computation_class": class, "computation_id": key, "computation_key": key,
           "namespace": "spa_1", "space_id": "spa_1"})
}

#[test]
fn identify_audience_entered_exactly_as_segment() {
    let s = spec("webhook", "");
    let c = change(ChangeKind::AudienceEntered, vec![id("user_id", "u123")]);
    let calls = calls(&s, &c, Mode::Identify);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].to_segment_json(),
        json!({
            "type": "identify",
            "messageId": calls[0].message_id,
            "timestamp": "2023-11-14T22:13:20.123Z",
            "userId": "u123",
            "traits": {"first_time_shopper": true},
            "context": {"personas": personas("audience", "first_time_shopper")},
            "integrations": {"All": false, "My Hook": true}
        })
    );
}

#[test]
fn track_audience_exited_exactly_as_segment() {
    let s = spec("webhook", "");
    let c = change(ChangeKind::AudienceExited, vec![id("user_id", "u123")]);
    let calls = calls(&s, &c, Mode::Track);
    assert_eq!(
        calls[0].to_segment_json(),
        json!({
            "type": "track",
            "messageId": calls[0].message_id,
            "timestamp": "2023-11-14T22:13:20.123Z",
            "userId": "u123",
            "event": "Audience Exited",
            "properties": {"audience_key": "first_time_shopper", "first_time_shopper": false},
            "context": {"personas": personas("audience", "first_time_shopper")},
            "integrations": {"All": false, "My Hook": true}
        })
    );
}

#[test]
fn traits_identify_and_track_trait_computed() {
    let s = spec("webhook", "");
    let c = change(
        ChangeKind::TraitComputed(json!(450.0)),
        vec![id("user_id", "u123")],
    );
    let calls = calls(&s, &c, Mode::Both);
    assert_eq!(calls.len(), 2);
    let identify = calls[0].to_segment_json();
    assert_eq!(identify["traits"], json!({"total_revenue_180_days": 450.0}));
    assert_eq!(
        identify["context"]["personas"],
        personas("computed_trait", "total_revenue_180_days")
    );
    let track = calls[1].to_segment_json();
    assert_eq!(track["event"], "Trait Computed");
    assert_eq!(
        track["properties"],
        json!({"trait_key": "total_revenue_180_days", "total_revenue_180_days": 450.0})
    );
    assert_ne!(calls[0].message_id, calls[1].message_id);
}

#[test]
fn one_call_per_identifier_and_value_with_email_placement() {
    let s = spec("webhook", "");
    let ids = vec![
        id("user_id", "u1"),
        id("email", "a@x.io"),
        id("email", "b@x.io"),
        id("anonymous_id", "anon"),
    ];
    let c = change(ChangeKind::AudienceEntered, ids.clone());
    let ident = calls(&s, &c, Mode::Identify);
    assert_eq!(
        ident.len(),
        3,
        "user id + 2 emails; anonymous ids only when included"
    );
    let j: Vec<Json> = ident.iter().map(Call::to_segment_json).collect();
    assert_eq!(j[1]["userId"], "u1");
    assert_eq!(
        j[1]["traits"],
        json!({"first_time_shopper": true, "email": "a@x.io"})
    );
    assert_eq!(j[2]["traits"]["email"], "b@x.io");
    let track = calls(&s, &c, Mode::Track);
    let t1 = track[1].to_segment_json();
    assert_eq!(t1["context"]["traits"], json!({"email": "a@x.io"}));
    assert_eq!(
        t1["properties"],
        json!({"audience_key": "first_time_shopper", "first_time_shopper": true})
    );

    let with_anon = spec("webhook", "    include_anonymous_ids: true\n");
    let all = calls(&with_anon, &c, Mode::Identify);
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].to_segment_json()["anonymousId"], "anon");
    assert_eq!(all[3].to_segment_json()["userId"], "u1");
    // Distinct, deterministic ids.
    let ids1: Vec<_> = all.iter().map(|c| c.message_id.clone()).collect();
    let again: Vec<_> = calls(&with_anon, &c, Mode::Identify)
        .into_iter()
        .map(|c| c.message_id)
        .collect();
    assert_eq!(ids1, again);
    let mut dedup = ids1.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 4);
}

#[test]
fn email_only_profile_uses_anonymous_id_or_profile_id() {
    let s = spec("webhook", "");
    let c = change(ChangeKind::AudienceEntered, vec![id("email", "a@x.io")]);
    let j = calls(&s, &c, Mode::Identify)[0].to_segment_json();
    assert_eq!(j["anonymousId"], "prof_1");
    assert!(j.get("userId").is_none());
    let none = change(ChangeKind::AudienceEntered, vec![]);
    assert!(calls(&s, &none, Mode::Both).is_empty());
}

#[test]
fn message_ids_differ_by_destination_change_and_time() {
    let s = spec("webhook", "");
    let enter = change(ChangeKind::AudienceEntered, vec![id("user_id", "u1")]);
    let mut exit = enter.clone();
    exit.kind = ChangeKind::AudienceExited;
    let mut later = enter.clone();
    later.changed_at_ms += 1;
    let a = calls(&s, &enter, Mode::Identify)[0].message_id.clone();
    assert_ne!(a, calls(&s, &exit, Mode::Identify)[0].message_id);
    assert_ne!(a, calls(&s, &later, Mode::Identify)[0].message_id);
    let mut other = s.clone();
    other.key = "other".into();
    assert_ne!(a, calls(&other, &enter, Mode::Identify)[0].message_id);
    assert_eq!(a.len(), 36);
}

#[test]
fn custom_event_names_and_snake_case_keys() {
    let s = spec("webhook", "    event_names: {audience_entered: Joined}\n");
    let mut c = change(ChangeKind::AudienceEntered, vec![id("user_id", "u1")]);
    c.key = "First Time Shopper".into();
    let j = calls(&s, &c, Mode::Track)[0].to_segment_json();
    assert_eq!(j["event"], "Joined");
    assert_eq!(
        j["properties"],
        json!({"audience_key": "first_time_shopper", "first_time_shopper": true})
    );
    assert_eq!(snake_case("FirstTimeShopper"), "first_time_shopper");
    assert_eq!(snake_case("feature-uses 30d"), "feature_uses_30d");
}

#[test]
fn segment_http_target_paths() {
    let s = spec("segment", "");
    let c = change(ChangeKind::AudienceEntered, vec![id("user_id", "u1")]);
    let cs = calls(&s, &c, Mode::Both);
    assert_eq!(
        request_for(&s, &cs[0], c.changed_at_ms).unwrap().url,
        "http://h/base/v1/identify"
    );
    let t = request_for(&s, &cs[1], c.changed_at_ms).unwrap();
    assert_eq!(t.url, "http://h/base/v1/track");
    assert_eq!(t.body, cs[1].to_segment_json());
}

#[test]
fn braze_users_track_exact() {
    let s = spec("braze", "");
    assert_eq!(s.dest_type, DestinationType::Braze);
    let c = change(
        ChangeKind::AudienceEntered,
        vec![id("user_id", "u1"), id("email", "a@x.io")],
    );
    let cs = calls(&s, &c, Mode::Both);
    let r = request_for(&s, &cs[0], c.changed_at_ms).unwrap();
    assert_eq!(r.url, "http://h/base/users/track");
    assert_eq!(
        r.body,
        json!({"attributes": [{"external_id": "u1", "first_time_shopper": true}]})
    );
    let t = request_for(&s, &cs[2], c.changed_at_ms).unwrap();
    assert_eq!(
        t.body,
        json!({"events": [{"external_id": "u1", "name": "Audience Entered", "time": "2023-11-14T22:13:20.123Z",
                           "properties": {"audience_key": "first_time_shopper", "first_time_shopper": true}}]})
    );
    let email_only = change(ChangeKind::AudienceExited, vec![id("email", "a@x.io")]);
    let e = &calls(&s, &email_only, Mode::Identify)[0];
    assert_eq!(
        request_for(&s, e, 0).unwrap().body,
        json!({"attributes": [{"email": "a@x.io", "first_time_shopper": false, "email": "a@x.io"}]})
    );
}

#[test]
fn iterable_update_and_track_exact() {
    let s = spec("iterable", "");
    let c = change(
        ChangeKind::TraitComputed(json!(7)),
        vec![id("user_id", "u1")],
    );
    let cs = calls(&s, &c, Mode::Both);
    let u = request_for(&s, &cs[0], c.changed_at_ms).unwrap();
    assert_eq!(u.url, "http://h/base/api/users/update");
    assert_eq!(
        u.body,
        json!({"userId": "u1", "dataFields": {"total_revenue_180_days": 7}, "preferUserId": true})
    );
    let t = request_for(&s, &cs[1], c.changed_at_ms).unwrap();
    assert_eq!(t.url, "http://h/base/api/events/track");
    assert_eq!(
        t.body,
        json!({"userId": "u1", "eventName": "Trait Computed", "id": cs[1].message_id, "createdAt": 1_700_000_000,
               "dataFields": {"trait_key": "total_revenue_180_days", "total_revenue_180_days": 7}})
    );
}

#[test]
fn list_members_and_hashing() {
    let ids = vec![id("user_id", "u1"), id("email", " A@X.io ")];
    assert_eq!(
        list_member("p1", &ids, false),
        json!({"profile_id": "p1", "user_id": "u1", "emails": [" A@X.io "]})
    );
    let hashed = list_member("p1", &ids, true);
    // sha256("a@x.io")
    assert_eq!(hashed["email_sha256"][0], json!(hash_email("a@x.io")));
    assert_eq!(
        hash_email("test@example.com"),
        "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
    );
    let b = list_batch("d", "VIP Users", "s1", vec![json!(1)], vec![]);
    assert_eq!(
        b,
        json!({"destination": "d", "audience_key": "vip_users", "sync_id": "s1", "adds": [1], "removes": []})
    );
}

fn group_id(g: &str) -> ExternalId {
    ExternalId {
        id_type: "group_id".into(),
        id: g.into(),
        collection: Some("accounts".into()),
    }
}

#[test]
fn account_audience_is_a_group_call_for_the_account_and_user_calls_with_its_group() {
    let s = spec("webhook", "");
    let mut acct = change(ChangeKind::AudienceEntered, vec![group_id("acme")]);
    acct.profile_id = "account:acme".into();
    acct.key = "at_risk_business_accounts".into();
    let calls_acct = calls(&s, &acct, Mode::Both);
    assert_eq!(calls_acct.len(), 1, "one group call, no per-account track");
    assert_eq!(
        calls_acct[0].to_segment_json(),
        json!({
            "type": "group",
            "messageId": calls_acct[0].message_id,
            "timestamp": "2023-11-14T22:13:20.123Z",
            "groupId": "acme",
            "traits": {"at_risk_business_accounts": true},
            "context": {"personas": personas("audience", "at_risk_business_accounts")},
            "integrations": {"All": false, "My Hook": true}
        })
    );
    assert!(calls(&s, &acct, Mode::Track).is_empty());
    let seg = spec("segment", "");
    assert_eq!(
        request_for(&seg, &calls_acct[0], 0).unwrap().url,
        "http://h/base/v1/group"
    );
    assert!(request_for(&spec("braze", ""), &calls_acct[0], 0).is_none());

    let mut user = change(
        ChangeKind::AudienceExited,
        vec![id("user_id", "u1"), group_id("acme")],
    );
    user.key = "at_risk_business_accounts".into();
    let uc = calls(&s, &user, Mode::Track);
    assert_eq!(
        uc[0].to_segment_json(),
        json!({
            "type": "track",
            "messageId": uc[0].message_id,
            "timestamp": "2023-11-14T22:13:20.123Z",
            "userId": "u1",
            "event": "Audience Exited",
            "properties": {"audience_key": "at_risk_business_accounts",
                           "at_risk_business_accounts": false},
            "context": {"personas": personas("audience", "at_risk_business_accounts"),
                        "groupId": "acme"},
            "integrations": {"All": false, "My Hook": true}
        })
    );
    // The same user's change for another account is another message.
    let mut other = user.clone();
    other.external_ids = vec![id("user_id", "u1"), group_id("globex")];
    assert_ne!(
        calls(&s, &other, Mode::Track)[0].message_id,
        uc[0].message_id
    );
    // Changes without an account keep their ids.
    let plain = change(ChangeKind::AudienceEntered, vec![id("user_id", "u123")]);
    let ident = Identity::UserId("u123".into());
    assert_eq!(
        message_id("dest", &plain, CallType::Identify, &ident),
        calls(&s, &plain, Mode::Identify)[0].message_id
    );
}

#[test]
fn braze_deletes_by_external_id_else_email_else_alias() {
    let s = spec("braze", "    include_anonymous_ids: true\n");
    let ids = vec![
        id("user_id", "u1"),
        id("email", "a@x.io"),
        id("anonymous_id", "an1"),
        ExternalId {
            id_type: "group_id".into(),
            id: "acme".into(),
            collection: Some("accounts".into()),
        },
    ];
    let calls = deletion_calls(&s, "spa_1", "prof_1", "reg-1", &ids);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].method, calls[0].url.as_str()),
        ("POST", "http://h/base/users/delete")
    );
    assert_eq!(calls[0].body, json!({"external_ids": ["u1"]}));
    // Without a user id: the email calls and the anonymous-id calls named two Braze users.
    let by_mail = deletion_calls(&s, "spa_1", "prof_1", "reg-1", &ids[1..]);
    let bodies: Vec<&Json> = by_mail.iter().map(|c| &c.body).collect();
    assert_eq!(
        bodies,
        [
            &json!({"email_addresses": ["a@x.io"]}),
            &json!({"user_aliases": [{"alias_name": "an1", "alias_label": "anonymous_id"}]})
        ]
    );
    let by_alias = deletion_calls(&s, "spa_1", "prof_1", "reg-1", &ids[2..]);
    assert_eq!(
        by_alias[0].body,
        json!({"user_aliases": [{"alias_name": "an1", "alias_label": "anonymous_id"}]})
    );
    // Anonymous ids only when the destination sends them; nothing else to name: no request.
    let no_anon = spec("braze", "");
    assert!(deletion_calls(&no_anon, "spa_1", "prof_1", "reg-1", &ids[2..]).is_empty());
    // At most 50 identifiers per request (Braze's limit).
    let many: Vec<ExternalId> = (0..120).map(|i| id("user_id", &format!("u{i}"))).collect();
    let chunks = deletion_calls(&s, "spa_1", "prof_1", "reg-1", &many);
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[2].body["external_ids"].as_array().unwrap().len(), 20);
}

#[test]
fn iterable_deletes_each_user_id_else_each_email() {
    let s = spec("iterable", "");
    let ids = vec![
        id("user_id", "u 1/x"),
        id("user_id", "u2"),
        id("email", "a+b@x.io"),
    ];
    let calls = deletion_calls(&s, "spa_1", "prof_1", "reg-1", &ids);
    let got: Vec<(&str, &str)> = calls.iter().map(|c| (c.method, c.url.as_str())).collect();
    assert_eq!(
        got,
        [
            ("DELETE", "http://h/base/api/users/byUserId/u%201%2Fx"),
            ("DELETE", "http://h/base/api/users/byUserId/u2"),
        ]
    );
    assert!(calls.iter().all(|c| c.body.is_null()));
    let by_mail = deletion_calls(&s, "spa_1", "prof_1", "reg-1", &ids[2..]);
    assert_eq!(by_mail[0].url, "http://h/base/api/users/a%2Bb%40x.io");
}

#[test]
fn only_braze_and_iterable_have_a_deletion_api() {
    let ids = vec![id("user_id", "u1")];
    for t in ["webhook", "segment", "list_http"] {
        assert!(
            deletion_calls(&spec(t, ""), "spa_1", "prof_1", "reg-1", &ids).is_empty(),
            "{t}"
        );
    }
    assert!(supports_deletion(DestinationType::Braze));
    assert!(supports_deletion(DestinationType::Iterable));
    for t in [
        DestinationType::Webhook,
        DestinationType::Segment,
        DestinationType::Kafka,
        DestinationType::ListHttp,
    ] {
        assert!(!supports_deletion(t));
    }
}

#[test]
fn deletion_message_ids_are_deterministic_per_regulation() {
    let s = spec("braze", "");
    let ids = vec![id("user_id", "u1")];
    let a = deletion_calls(&s, "spa_1", "prof_1", "reg-1", &ids);
    let b = deletion_calls(&s, "spa_1", "prof_1", "reg-1", &ids);
    let c = deletion_calls(&s, "spa_1", "prof_1", "reg-2", &ids);
    assert_eq!(a[0].message_id, b[0].message_id);
    assert_ne!(a[0].message_id, c[0].message_id);
    let mark = crate::outbox::deletion_mark("dest", "prof_1", "reg-1");
    assert!(mark.starts_with(b"x/"));
    assert!(!String::from_utf8_lossy(&mark).contains("prof_1"));
    assert_ne!(
        mark,
        crate::outbox::deletion_mark("dest", "prof_1", "reg-2")
    );
}
