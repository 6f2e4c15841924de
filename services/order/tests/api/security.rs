//! Authorization through the real servers: BOLA (one user reaching another
//! user's user, orders and payments) and the RBAC matrix over every RPC.

use mercato_proto::{
    experiment::v1::{self as experiment_pb, experiment_service_client::ExperimentServiceClient},
    order::v1::{
        self as order_pb, catalog_service_client::CatalogServiceClient,
        order_service_client::OrderServiceClient,
    },
    payment::v1::{
        self as payment_pb, list_payments_request::Filter,
        payment_service_client::PaymentServiceClient,
    },
    user::v1::{self as user_pb, UserStatus, user_service_client::UserServiceClient},
};
use mercato_testkit::auth::{token, with_token};
use tonic::{Code, Status};

use crate::support::*;

mercato_testkit::on_both_backends!(
    another_users_resources_are_permission_denied,
    rbac_matrix_over_every_rpc
);

struct Clients {
    users: UserServiceClient<AuthedChannel>,
    orders: OrderServiceClient<AuthedChannel>,
    catalog: CatalogServiceClient<AuthedChannel>,
    payments: PaymentServiceClient<AuthedChannel>,
    experiments: ExperimentServiceClient<AuthedChannel>,
}

async fn clients(s: &Suite, token: &str) -> Clients {
    let order = channel(s.order_addr.unwrap()).await;
    Clients {
        users: UserServiceClient::new(with_token(channel(s.user_addr).await, token)),
        experiments: ExperimentServiceClient::new(with_token(channel(s.user_addr).await, token)),
        orders: OrderServiceClient::new(with_token(order.clone(), token)),
        catalog: CatalogServiceClient::new(with_token(order, token)),
        payments: PaymentServiceClient::new(with_token(channel(s.payment_proxy.addr).await, token)),
    }
}

fn code<T>(result: Result<T, Status>) -> Code {
    result.map_or_else(|s| s.code(), |_| Code::Ok)
}

async fn another_users_resources_are_permission_denied(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let a = s.user("a@example.com", UserStatus::Active).await;
    let b = s.user("b@example.com", UserStatus::Active).await;
    s.product("apple", 100, 10).await;
    let mut as_b = clients(&s, &token(&b, &["user"])).await;
    let order_b = as_b
        .orders
        .create_order(order_request("b-1", &b, &[("apple", 1)], "pm_approve"))
        .await
        .expect("B orders for itself")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(order_b.status(), order_pb::OrderStatus::Confirmed);

    let mut as_a = clients(&s, &token(&a, &["user"])).await;
    let missing = uuid::Uuid::now_v7().to_string();
    let user = |id: &str| user_pb::GetUserRequest { user_id: id.into() };
    let get_order = |id: &str| order_pb::GetOrderRequest {
        order_id: id.into(),
    };
    let get_payment = |id: &str| payment_pb::GetPaymentRequest {
        payment_id: id.into(),
    };
    let by_order = |id: &str| payment_pb::ListPaymentsRequest {
        filter: Some(Filter::OrderId(id.into())),
        ..Default::default()
    };
    let cancel = |id: &str| order_pb::CancelOrderRequest {
        order_id: id.into(),
        reason: String::new(),
    };
    let attempts = vec![
        ("GetUser of B", code(as_a.users.get_user(user(&b)).await)),
        (
            "UpdateUser of B",
            code(
                as_a.users
                    .update_user(user_pb::UpdateUserRequest {
                        user_id: b.clone(),
                        full_name: "Pwned".into(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "DeleteUser of B",
            code(
                as_a.users
                    .delete_user(user_pb::DeleteUserRequest { user_id: b.clone() })
                    .await,
            ),
        ),
        (
            "SetUserStatus of B",
            code(
                as_a.users
                    .set_user_status(user_pb::SetUserStatusRequest {
                        user_id: b.clone(),
                        status: UserStatus::Suspended.into(),
                    })
                    .await,
            ),
        ),
        (
            "StreamUserActivity of B",
            code(
                as_a.users
                    .stream_user_activity(user_pb::StreamUserActivityRequest {
                        user_id: b.clone(),
                        from_time: None,
                    })
                    .await,
            ),
        ),
        (
            "GetOrder of B's order",
            code(as_a.orders.get_order(get_order(&order_b.order_id)).await),
        ),
        (
            "CancelOrder of B's order",
            code(as_a.orders.cancel_order(cancel(&order_b.order_id)).await),
        ),
        (
            "ListOrders of B",
            code(
                as_a.orders
                    .list_orders(order_pb::ListOrdersRequest {
                        user_id: b.clone(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "CreateOrder for B",
            code(
                as_a.orders
                    .create_order(order_request("a-as-b", &b, &[("apple", 1)], "pm_approve"))
                    .await,
            ),
        ),
        (
            "GetPayment of B's payment",
            code(
                as_a.payments
                    .get_payment(get_payment(&order_b.payment_id))
                    .await,
            ),
        ),
        (
            "ListPayments of B",
            code(
                as_a.payments
                    .list_payments(payment_pb::ListPaymentsRequest {
                        filter: Some(Filter::UserId(b.clone())),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "ListPayments of B's order",
            code(
                as_a.payments
                    .list_payments(by_order(&order_b.order_id))
                    .await,
            ),
        ),
        (
            "GetUser of a missing id",
            code(as_a.users.get_user(user(&missing)).await),
        ),
        (
            "GetOrder of a missing id",
            code(as_a.orders.get_order(get_order(&missing)).await),
        ),
        (
            "CancelOrder of a missing id",
            code(as_a.orders.cancel_order(cancel(&missing)).await),
        ),
        (
            "GetPayment of a missing id",
            code(as_a.payments.get_payment(get_payment(&missing)).await),
        ),
        (
            "ListPayments of a missing order",
            code(as_a.payments.list_payments(by_order(&missing)).await),
        ),
    ];
    for (what, observed) in &attempts {
        println!("BOLA {what:<36} -> {observed:?}");
        assert_eq!(*observed, Code::PermissionDenied, "{what}");
    }
    // A on its own resources is fine, and B's order is untouched.
    as_a.users.get_user(user(&a)).await.expect("own user");
    as_a.orders
        .create_order(order_request("a-1", &a, &[("apple", 1)], "pm_approve"))
        .await
        .expect("own order");
    let still = s
        .orders
        .get_order(get_order(&order_b.order_id))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(still.status(), order_pb::OrderStatus::Confirmed);
    let b_user = s
        .users
        .get_user(user(&b))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(
        (b_user.full_name.as_str(), b_user.status()),
        ("Buyer", UserStatus::Active)
    );
}

const RPCS: [(&str, &str); 32] = [
    ("/user.v1.UserService/CreateUser", "user:create"),
    ("/user.v1.UserService/GetUser", "user:read"),
    ("/user.v1.UserService/UpdateUser", "user:write"),
    ("/user.v1.UserService/ListUsers", "user:list"),
    ("/user.v1.UserService/DeleteUser", "user:delete"),
    ("/user.v1.UserService/SetUserStatus", "user:admin"),
    ("/user.v1.UserService/StreamUserActivity", "user:read"),
    ("/user.v1.UserService/CreateApiKey", "apikey:admin"),
    ("/user.v1.UserService/ListApiKeys", "apikey:admin"),
    ("/user.v1.UserService/RevokeApiKey", "apikey:admin"),
    ("/order.v1.OrderService/CreateOrder", "order:write"),
    ("/order.v1.OrderService/GetOrder", "order:read"),
    ("/order.v1.OrderService/ListOrders", "order:read"),
    ("/order.v1.OrderService/CancelOrder", "order:write"),
    ("/order.v1.CatalogService/CreateProduct", "catalog:write"),
    ("/order.v1.CatalogService/GetProduct", "catalog:read"),
    ("/order.v1.CatalogService/ListProducts", "catalog:read"),
    ("/order.v1.CatalogService/AdjustStock", "catalog:write"),
    ("/payment.v1.PaymentService/Charge", "payment:write"),
    ("/payment.v1.PaymentService/Refund", "payment:write"),
    ("/payment.v1.PaymentService/VoidCharge", "payment:write"),
    ("/payment.v1.PaymentService/GetPayment", "payment:read"),
    ("/payment.v1.PaymentService/ListPayments", "payment:read"),
    ("/payment.v1.PaymentService/Reconcile", "payment:audit"),
    (
        "/experiment.v1.ExperimentService/CreateExperiment",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/GetExperiment",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/ListExperiments",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/UpdateExperiment",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/SetExperimentStatus",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/GetResults",
        "experiment:admin",
    ),
    (
        "/experiment.v1.ExperimentService/GetAssignment",
        "experiment:participate",
    ),
    (
        "/experiment.v1.ExperimentService/TrackEvent",
        "experiment:participate",
    ),
];

/// Calls `rpc` with an empty request: an allowed call fails validation (or
/// succeeds), a forbidden one is PERMISSION_DENIED before any handler runs.
async fn call(c: &mut Clients, rpc: &str) -> Code {
    match rpc.rsplit('/').next().unwrap_or_default() {
        "CreateUser" => code(
            c.users
                .create_user(user_pb::CreateUserRequest::default())
                .await,
        ),
        "GetUser" => code(c.users.get_user(user_pb::GetUserRequest::default()).await),
        "UpdateUser" => code(
            c.users
                .update_user(user_pb::UpdateUserRequest::default())
                .await,
        ),
        "ListUsers" => code(
            c.users
                .list_users(user_pb::ListUsersRequest::default())
                .await,
        ),
        "DeleteUser" => code(
            c.users
                .delete_user(user_pb::DeleteUserRequest::default())
                .await,
        ),
        "SetUserStatus" => code(
            c.users
                .set_user_status(user_pb::SetUserStatusRequest::default())
                .await,
        ),
        "StreamUserActivity" => code(
            c.users
                .stream_user_activity(user_pb::StreamUserActivityRequest::default())
                .await,
        ),
        "CreateApiKey" => code(
            c.users
                .create_api_key(user_pb::CreateApiKeyRequest::default())
                .await,
        ),
        "ListApiKeys" => code(
            c.users
                .list_api_keys(user_pb::ListApiKeysRequest::default())
                .await,
        ),
        "RevokeApiKey" => code(
            c.users
                .revoke_api_key(user_pb::RevokeApiKeyRequest::default())
                .await,
        ),
        "CreateOrder" => code(
            c.orders
                .create_order(order_pb::CreateOrderRequest::default())
                .await,
        ),
        "GetOrder" => code(
            c.orders
                .get_order(order_pb::GetOrderRequest::default())
                .await,
        ),
        "ListOrders" => code(
            c.orders
                .list_orders(order_pb::ListOrdersRequest::default())
                .await,
        ),
        "CancelOrder" => code(
            c.orders
                .cancel_order(order_pb::CancelOrderRequest::default())
                .await,
        ),
        "CreateProduct" => code(
            c.catalog
                .create_product(order_pb::CreateProductRequest::default())
                .await,
        ),
        "GetProduct" => code(
            c.catalog
                .get_product(order_pb::GetProductRequest::default())
                .await,
        ),
        "ListProducts" => code(
            c.catalog
                .list_products(order_pb::ListProductsRequest::default())
                .await,
        ),
        "AdjustStock" => code(
            c.catalog
                .adjust_stock(order_pb::AdjustStockRequest::default())
                .await,
        ),
        "Charge" => code(
            c.payments
                .charge(payment_pb::ChargeRequest::default())
                .await,
        ),
        "Refund" => code(
            c.payments
                .refund(payment_pb::RefundRequest::default())
                .await,
        ),
        "VoidCharge" => code(
            c.payments
                .void_charge(payment_pb::VoidChargeRequest::default())
                .await,
        ),
        "GetPayment" => code(
            c.payments
                .get_payment(payment_pb::GetPaymentRequest::default())
                .await,
        ),
        "ListPayments" => code(
            c.payments
                .list_payments(payment_pb::ListPaymentsRequest::default())
                .await,
        ),
        "Reconcile" => code(
            c.payments
                .reconcile(payment_pb::ReconcileRequest::default())
                .await,
        ),
        "CreateExperiment" => code(
            c.experiments
                .create_experiment(experiment_pb::CreateExperimentRequest::default())
                .await,
        ),
        "GetExperiment" => code(
            c.experiments
                .get_experiment(experiment_pb::GetExperimentRequest::default())
                .await,
        ),
        "ListExperiments" => code(
            c.experiments
                .list_experiments(experiment_pb::ListExperimentsRequest::default())
                .await,
        ),
        "UpdateExperiment" => code(
            c.experiments
                .update_experiment(experiment_pb::UpdateExperimentRequest::default())
                .await,
        ),
        "SetExperimentStatus" => code(
            c.experiments
                .set_experiment_status(experiment_pb::SetExperimentStatusRequest::default())
                .await,
        ),
        "GetResults" => code(
            c.experiments
                .get_results(experiment_pb::GetResultsRequest::default())
                .await,
        ),
        "GetAssignment" => code(
            c.experiments
                .get_assignment(experiment_pb::GetAssignmentRequest::default())
                .await,
        ),
        "TrackEvent" => code(
            c.experiments
                .track_event(experiment_pb::TrackEventRequest::default())
                .await,
        ),
        other => panic!("no call for {other}"),
    }
}

async fn rbac_matrix_over_every_rpc(db: Db) {
    let s = Suite::start(db, |_| {}).await;
    let policy = mercato_auth::Policy::default();
    assert_eq!(
        policy.methods.len(),
        RPCS.len(),
        "the matrix covers every RPC in the policy"
    );
    let mut checked = 0;
    for role in ["admin", "user", "guest", "service", "no-such-role"] {
        let mut c = clients(&s, &token(&uuid::Uuid::now_v7().to_string(), &[role])).await;
        for (rpc, permission) in RPCS {
            assert_eq!(
                policy.methods.get(rpc).map(String::as_str),
                Some(permission),
                "{rpc}"
            );
            let allowed = policy
                .roles
                .get(role)
                .is_some_and(|p| p.contains(permission));
            let observed = call(&mut c, rpc).await;
            let ok = if allowed {
                matches!(observed, Code::Ok | Code::InvalidArgument | Code::NotFound)
            } else {
                observed == Code::PermissionDenied
            };
            assert!(
                ok,
                "{role} × {rpc}: policy says allowed={allowed}, server answered {observed:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * RPCS.len());
}
