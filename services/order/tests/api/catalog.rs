//! Catalog calls, stock adjustments and request validation.

use mercato_proto::{
    common::v1::Money,
    order::v1::{
        AdjustStockRequest, CancelOrderRequest, CreateProductRequest, GetOrderRequest,
        GetProductRequest, ListOrdersRequest, ListProductsRequest, OrderStatus, Product,
    },
    user::v1::UserStatus,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

mercato_testkit::on_both_backends!(
    products_and_stock_rules,
    order_requests_are_validated_and_listed,
    an_experiment_sets_the_default_page_size
);

fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

async fn products_and_stock_rules(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let generated = s.product("", 10, 0).await;
    assert!(
        uuid::Uuid::parse_str(&generated.product_id).is_ok(),
        "an id is generated"
    );
    s.product("tea", 300, 10).await;
    let status = s
        .catalog
        .create_product(CreateProductRequest {
            product: Some(Product {
                product_id: "tea".into(),
                name: "Again".into(),
                price: Some(Money {
                    currency_code: "USD".into(),
                    amount_minor: 1,
                }),
                ..Product::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = s
        .catalog
        .create_product(CreateProductRequest {
            product: Some(Product {
                product_id: "bad id!".into(),
                name: " ".into(),
                price: None,
                stock: -1,
                ..Product::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        fields(&status),
        [
            "product.product_id",
            "product.name",
            "product.price",
            "product.stock"
        ]
    );

    // Twenty concurrent "-1" on a stock of 10: exactly ten succeed.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut c = s.catalog.clone();
            tokio::spawn(async move {
                c.adjust_stock(AdjustStockRequest {
                    product_id: "tea".into(),
                    delta: -1,
                })
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition),
        }
    }
    assert_eq!(ok, 10);
    let tea = s
        .catalog
        .get_product(GetProductRequest {
            product_id: "tea".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(tea.stock, 0, "never negative");
    let up = s
        .catalog
        .adjust_stock(AdjustStockRequest {
            product_id: "tea".into(),
            delta: 7,
        })
        .await
        .unwrap();
    assert_eq!(up.into_inner().product.unwrap().stock, 7);
    let status = s
        .catalog
        .adjust_stock(AdjustStockRequest {
            product_id: "tea".into(),
            delta: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["delta"]);
    let status = s
        .catalog
        .adjust_stock(AdjustStockRequest {
            product_id: "nope".into(),
            delta: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let page = s
        .catalog
        .list_products(ListProductsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.products.len(), 1);
    let rest = s
        .catalog
        .list_products(ListProductsRequest {
            page_size: 10,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.products.len(), 1);
    assert!(rest.next_page_token.is_empty());

    // The call's A/B variants come back in the answer (x-ab-variant).
    let mut request = tonic::Request::new(ListProductsRequest::default());
    request
        .metadata_mut()
        .insert("x-ab-variant", "page-size=large, Bad=x".parse().unwrap());
    let answer = s.catalog.list_products(request).await.unwrap();
    assert_eq!(
        answer
            .metadata()
            .get("x-ab-variant")
            .and_then(|v| v.to_str().ok()),
        Some("page-size=large")
    );
    let plain = s
        .catalog
        .list_products(ListProductsRequest::default())
        .await
        .unwrap();
    assert!(plain.metadata().get("x-ab-variant").is_none());
}

async fn order_requests_are_validated_and_listed(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let user = s.user("valid@example.com", UserStatus::Active).await;
    s.product("tea", 300, 100).await;

    let status = s.place("", "not-a-uuid", &[], "").await.unwrap_err();
    assert_eq!(
        fields(&status),
        ["request_id", "user_id", "items", "payment_method"]
    );
    let status = s
        .place(
            "r",
            &user,
            &[("tea", 0), ("tea", 1), ("bad id", 1)],
            "pm_approve",
        )
        .await
        .unwrap_err();
    assert_eq!(
        fields(&status),
        [
            "items[0].quantity",
            "items[1].product_id",
            "items[2].product_id"
        ]
    );
    let status = s
        .place("r", &user, &[("missing", 1)], "pm_approve")
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["items[0].product_id"]);
    let status = s.place("r", &user, &[("tea", 1)], "pm_unknown").await;
    let cancelled = status.unwrap();
    assert_eq!(
        cancelled.status(),
        OrderStatus::Cancelled,
        "an unknown payment method is a refused charge"
    );

    for i in 0..3 {
        s.place(&format!("list-{i}"), &user, &[("tea", 1)], "pm_approve")
            .await
            .unwrap();
    }
    let page = s
        .orders
        .list_orders(ListOrdersRequest {
            user_id: user.clone(),
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.orders.len(), 3);
    assert!(
        page.orders
            .windows(2)
            .all(|w| w[0].order_id > w[1].order_id),
        "newest first"
    );
    let rest = s
        .orders
        .list_orders(ListOrdersRequest {
            user_id: user.clone(),
            page_size: 3,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.orders.len(), 1);

    let missing = uuid::Uuid::now_v7().to_string();
    let status = s
        .orders
        .get_order(GetOrderRequest {
            order_id: missing.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = s
        .orders
        .cancel_order(CancelOrderRequest {
            order_id: missing,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = s
        .orders
        .get_order(GetOrderRequest {
            order_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["order_id"]);
}

/// The order service's A/B experiment end to end: the variant the user
/// service assigns sets ListProducts' default page size, and the answer
/// names it; pausing the experiment brings the usual default back.
async fn an_experiment_sets_the_default_page_size(db: Db) {
    use mercato_proto::experiment::v1::{
        CreateExperimentRequest, Experiment, ExperimentStatus, GetResultsRequest,
        SetExperimentStatusRequest, Variant, experiment_service_client::ExperimentServiceClient,
    };
    use mercato_proto::order::v1::catalog_service_client::CatalogServiceClient;
    use mercato_testkit::auth::{token, with_token};

    let mut s = Suite::start(db, |_| {}).await;
    for id in ["p1", "p2", "p3"] {
        s.product(id, 100, 1).await;
    }
    let mut experiments = ExperimentServiceClient::new(admin_channel(s.user_addr).await);
    let page_size = |n: f64| prost_types::Struct {
        fields: [(
            "page_size".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(n)),
            },
        )]
        .into(),
    };
    experiments
        .create_experiment(CreateExperimentRequest {
            experiment: Some(Experiment {
                key: "catalog-page-size".into(),
                name: "Catalog page size".into(),
                variants: vec![
                    Variant {
                        key: "control".into(),
                        weight: 0,
                        config: None,
                    },
                    Variant {
                        key: "small".into(),
                        weight: 100,
                        config: Some(page_size(1.0)),
                    },
                ],
                traffic_percent: 100,
                ..Experiment::default()
            }),
        })
        .await
        .unwrap();
    let set = |status: ExperimentStatus| SetExperimentStatusRequest {
        key: "catalog-page-size".into(),
        status: status.into(),
    };
    experiments
        .set_experiment_status(set(ExperimentStatus::Running))
        .await
        .unwrap();

    let shopper = token(&uuid::Uuid::now_v7().to_string(), &["user"]);
    let mut catalog =
        CatalogServiceClient::new(with_token(channel(s.order_addr.unwrap()).await, &shopper));
    let answer = catalog
        .list_products(ListProductsRequest::default())
        .await
        .unwrap();
    assert_eq!(
        answer
            .metadata()
            .get("x-ab-variant")
            .and_then(|v| v.to_str().ok()),
        Some("catalog-page-size=small")
    );
    let page = answer.into_inner();
    assert_eq!(page.products.len(), 1);
    assert!(!page.next_page_token.is_empty());
    // An explicit page size wins and consults no experiment.
    let explicit = catalog
        .list_products(ListProductsRequest {
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap();
    assert!(explicit.metadata().get("x-ab-variant").is_none());
    assert_eq!(explicit.into_inner().products.len(), 3);
    let results = experiments
        .get_results(GetResultsRequest {
            experiment_key: "catalog-page-size".into(),
            event_name: "purchase".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(results.variants[1].exposures, 1, "{results:?}");

    experiments
        .set_experiment_status(set(ExperimentStatus::Paused))
        .await
        .unwrap();
    let paused = catalog
        .list_products(ListProductsRequest::default())
        .await
        .unwrap();
    assert!(paused.metadata().get("x-ab-variant").is_none());
    assert_eq!(paused.into_inner().products.len(), 3);
}
