//! The CRUD suite, run once on SQLite and once on Postgres.

use mercato_proto::user::v1::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, SetUserStatusRequest,
    StreamUserActivityRequest, UpdateUserRequest, User, UserPreferences, UserStatus,
};
use prost_types::{FieldMask, Timestamp};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{Db, RedisMode, TestApp, TestDatabase, get_user};

mercato_testkit::on_both_backends!(
    create_get_update_delete,
    pagination_walks_every_page_once,
    validation_errors_name_each_field,
    duplicate_email_is_already_exists,
    unknown_ids_are_not_found,
    update_mask_rules,
    hostile_input_never_panics,
);

pub(crate) fn create_req(email: &str, name: &str) -> CreateUserRequest {
    CreateUserRequest {
        email: email.into(),
        full_name: name.into(),
        preferences: None,
    }
}

pub(crate) async fn create(app: &mut TestApp, email: &str, name: &str) -> User {
    app.client
        .create_user(create_req(email, name))
        .await
        .expect("create user")
        .into_inner()
        .user
        .expect("user in response")
}

async fn delete(app: &mut TestApp, id: &str) -> User {
    app.client
        .delete_user(DeleteUserRequest { user_id: id.into() })
        .await
        .expect("delete user")
        .into_inner()
        .user
        .expect("user")
}

async fn create_get_update_delete(db: Db) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;

    let created = app
        .client
        .create_user(CreateUserRequest {
            email: " Ada@Example.COM ".into(),
            full_name: "  Ada Lovelace ".into(),
            preferences: Some(UserPreferences {
                language: "en-GB".into(),
                timezone: "Europe/London".into(),
                email_notifications: true,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.message, "user created");
    let user = created.user.unwrap();
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(user.full_name, "Ada Lovelace");
    assert_eq!(user.status(), UserStatus::Active);
    assert_eq!(user.created_at, user.updated_at);
    assert!(uuid::Uuid::parse_str(&user.user_id).is_ok());

    let fetched = get_user(&mut app.client, &user.user_id).await;
    assert_eq!(fetched, user);

    let updated = app
        .client
        .update_user(UpdateUserRequest {
            user_id: user.user_id.clone(),
            full_name: "Ada King".into(),
            preferences: None,
            update_mask: Some(FieldMask {
                paths: vec!["full_name".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(updated.full_name, "Ada King");
    assert_eq!(
        updated.preferences, user.preferences,
        "untouched by the mask"
    );
    let micros = |t: &Option<Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(micros(&updated.updated_at) > micros(&user.updated_at));

    let suspended = app
        .client
        .set_user_status(SetUserStatusRequest {
            user_id: user.user_id.clone(),
            status: UserStatus::Suspended.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(suspended.status(), UserStatus::Suspended);

    let deleted = delete(&mut app, &user.user_id).await;
    assert_eq!(deleted.status(), UserStatus::Inactive);
    // Soft delete: still readable, and deleting again is a no-op success.
    let again = delete(&mut app, &user.user_id).await;
    assert_eq!(again, deleted);
    let read = get_user(&mut app.client, &user.user_id).await;
    assert_eq!(read.status(), UserStatus::Inactive);
    app.shutdown().await;
}

async fn pagination_walks_every_page_once(db: Db) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            create(
                &mut app,
                &format!("user{i}@example.com"),
                &format!("User {i}"),
            )
            .await
            .user_id,
        );
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .client
            .list_users(ListUsersRequest {
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.users.len() <= 3);
        seen.extend(page.users.into_iter().map(|u| u.user_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every user once, in creation order");

    // Default page size covers all seven; an exact fit leaves no next page.
    let all = app
        .client
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.users.len(), 7);
    assert!(all.next_page_token.is_empty());
    let exact = app
        .client
        .list_users(ListUsersRequest {
            page_size: 7,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(exact.next_page_token.is_empty());
    app.shutdown().await;
}

/// The field names of the BadRequest detail in an INVALID_ARGUMENT status.
pub(crate) fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status
        .get_details_bad_request()
        .expect("BadRequest details");
    bad_request
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

async fn validation_errors_name_each_field(db: Db) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let c = &mut app.client;

    let cases: Vec<(CreateUserRequest, Vec<&str>)> = vec![
        (create_req("", ""), vec!["email", "full_name"]),
        (create_req("not-an-email", "Ada"), vec!["email"]),
        (create_req("ada@localhost", "Ada"), vec!["email"]),
        (
            create_req(&format!("{}@example.com", "a".repeat(250)), "Ada"),
            vec!["email"],
        ),
        (create_req("ada@example.com", "   "), vec!["full_name"]),
        (
            create_req("ada@example.com", &"x".repeat(101)),
            vec!["full_name"],
        ),
        (create_req("ada@example.com", "Ada\u{7}"), vec!["full_name"]),
        (
            CreateUserRequest {
                preferences: Some(UserPreferences {
                    language: "english please".into(),
                    timezone: "Mars/../Olympus".into(),
                    email_notifications: false,
                }),
                ..create_req("ada@example.com", "Ada")
            },
            vec!["preferences.language", "preferences.timezone"],
        ),
    ];
    for (request, fields) in cases {
        let status = c.create_user(request.clone()).await.expect_err("rejected");
        assert_eq!(violated_fields(&status), fields, "for {request:?}");
    }

    let status = c
        .get_user(GetUserRequest {
            user_id: "42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["user_id"]);
    let status = c.get_user(GetUserRequest::default()).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["user_id"]);
    let status = c
        .delete_user(DeleteUserRequest {
            user_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["user_id"]);

    let status = c
        .set_user_status(SetUserStatusRequest {
            user_id: "x".into(),
            status: UserStatus::Unspecified.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["user_id", "status"]);
    let status = c
        .set_user_status(SetUserStatusRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
            status: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["status"]);

    let status = c
        .list_users(ListUsersRequest {
            page_size: -1,
            page_token: "garbage!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size", "page_token"]);

    let status = c
        .stream_user_activity(StreamUserActivityRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
            from_time: Some(Timestamp {
                seconds: 0,
                nanos: 2_000_000_000,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["from_time"]);
    app.shutdown().await;
}

async fn duplicate_email_is_already_exists(db: Db) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let user = create(&mut app, "grace@example.com", "Grace").await;
    let status = app
        .client
        .create_user(create_req("GRACE@example.com", "Other"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    // A soft-deleted user keeps the address.
    app.client
        .delete_user(DeleteUserRequest {
            user_id: user.user_id,
        })
        .await
        .unwrap();
    let status = app
        .client
        .create_user(create_req("grace@example.com", "Again"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    app.shutdown().await;
}

async fn unknown_ids_are_not_found(db: Db) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let missing = uuid::Uuid::now_v7().to_string();
    let c = &mut app.client;
    let codes = [
        c.get_user(GetUserRequest {
            user_id: missing.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.update_user(UpdateUserRequest {
            user_id: missing.clone(),
            full_name: "X".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        c.delete_user(DeleteUserRequest {
            user_id: missing.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.set_user_status(SetUserStatusRequest {
            user_id: missing.clone(),
            status: UserStatus::Active.into(),
        })
        .await
        .unwrap_err()
        .code(),
        c.stream_user_activity(StreamUserActivityRequest {
            user_id: missing,
            from_time: None,
        })
        .await
        .unwrap_err()
        .code(),
    ];
    assert_eq!(codes, [Code::NotFound; 5]);
    app.shutdown().await;
}

async fn update_mask_rules(db: Db) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let user = app
        .client
        .create_user(CreateUserRequest {
            preferences: Some(UserPreferences {
                language: "en".into(),
                timezone: "UTC".into(),
                email_notifications: true,
            }),
            ..create_req("mask@example.com", "Mask")
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let update =
        |paths: Vec<&str>, full_name: &str, prefs: Option<UserPreferences>| UpdateUserRequest {
            user_id: user.user_id.clone(),
            full_name: full_name.into(),
            preferences: prefs,
            update_mask: (!paths.is_empty()).then(|| FieldMask {
                paths: paths.into_iter().map(String::from).collect(),
            }),
        };

    // One preference field: the others stay.
    let u = app
        .client
        .update_user(update(
            vec!["preferences.timezone"],
            "ignored, not in mask",
            Some(UserPreferences {
                language: "fr".into(),
                timezone: "Europe/Paris".into(),
                email_notifications: false,
            }),
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let prefs = u.preferences.unwrap();
    assert_eq!(
        (
            prefs.language.as_str(),
            prefs.timezone.as_str(),
            prefs.email_notifications
        ),
        ("en", "Europe/Paris", true)
    );
    assert_eq!(u.full_name, "Mask");

    // "preferences" with none given clears them (AIP-134).
    let u = app
        .client
        .update_user(update(vec!["preferences"], "", None))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(u.preferences.unwrap(), UserPreferences::default());

    // No mask: every field set in the request.
    let u = app
        .client
        .update_user(update(vec![], "Unmasked", None))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(u.full_name, "Unmasked");

    // Unknown paths, an invalid value in the mask, and nothing to do are all rejected.
    let status = app
        .client
        .update_user(update(vec!["email", "full_name"], "", None))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["update_mask.paths[0]", "full_name"]
    );
    let status = app
        .client
        .update_user(update(vec![], "", None))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["update_mask"]);
    let status = app
        .client
        .update_user(update(
            vec!["preferences.language"],
            "",
            Some(UserPreferences {
                language: "??".into(),
                ..Default::default()
            }),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["preferences.language"]);

    let stored = get_user(&mut app.client, &user.user_id).await;
    assert_eq!(
        stored.full_name, "Unmasked",
        "rejected updates changed nothing"
    );
    app.shutdown().await;
}

async fn hostile_input_never_panics(db: Db) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let nasty = [
        "\0".to_owned(),
        "'; DROP TABLE users; --".to_owned(),
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✨ ١٢٣".to_owned(),
        "a".repeat(100_000),
        "\u{202e}evil@example.com".to_owned(),
        "x@y.z\r\nBcc: all@example.com".to_owned(),
    ];
    for s in &nasty {
        for (email, name) in [(s.as_str(), "Name"), ("ok@example.com", s.as_str())] {
            let result = app.client.create_user(create_req(email, name)).await;
            if let Err(status) = result {
                assert!(
                    matches!(status.code(), Code::InvalidArgument | Code::AlreadyExists),
                    "{status:?}"
                );
            }
        }
        let status = app
            .client
            .get_user(GetUserRequest { user_id: s.clone() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = app
            .client
            .list_users(ListUsersRequest {
                page_size: 1,
                page_token: s.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    // The server is still healthy and the table intact.
    let list = app
        .client
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!list.users.is_empty());
    app.shutdown().await;
}
