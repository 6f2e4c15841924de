//! Requests that set up data for a test, so tests say what they create
//! rather than spell out every field.

use mercato_proto::{
    common::v1::Money,
    order::v1::{CreateProductRequest, Product, catalog_service_client::CatalogServiceClient},
    user::v1::{CreateUserRequest, user_service_client::UserServiceClient},
};

use crate::auth::AuthedChannel;

/// Creates an active user "Shopper" through `users`; returns its id.
pub async fn shopper(users: &mut UserServiceClient<AuthedChannel>, email: &str) -> String {
    users
        .create_user(new_user(email, "Shopper"))
        .await
        .expect("CreateUser")
        .into_inner()
        .user
        .expect("user")
        .user_id
}

/// Creates a product with `stock` units at `price_minor` USD cents.
pub async fn usd_product(
    catalog: &mut CatalogServiceClient<AuthedChannel>,
    id: &str,
    price_minor: i64,
    stock: i64,
) {
    catalog
        .create_product(new_product(id, "USD", price_minor, stock))
        .await
        .expect("CreateProduct");
}

/// CreateUser for an active user.
pub fn new_user(email: &str, full_name: &str) -> CreateUserRequest {
    CreateUserRequest {
        email: email.into(),
        full_name: full_name.into(),
        preferences: None,
    }
}

/// CreateProduct "Product `id`": `stock` units at `price_minor` in `currency`.
pub fn new_product(id: &str, currency: &str, price_minor: i64, stock: i64) -> CreateProductRequest {
    CreateProductRequest {
        product: Some(Product {
            product_id: id.into(),
            name: format!("Product {id}"),
            price: Some(Money {
                currency_code: currency.into(),
                amount_minor: price_minor,
            }),
            stock,
            ..Product::default()
        }),
    }
}
