//! Customers placing orders at once, as a load generator would: each order
//! is retried with its own `request_id` until some replica answers, so
//! killed processes and refused connections cost time, never a duplicate.

use std::{sync::Arc, time::Duration};

use mercato_proto::order::v1::{
    CreateOrderRequest, Order, OrderItem, order_service_client::OrderServiceClient,
};
use tokio::sync::Semaphore;

use crate::auth::AuthedChannel;

/// One order to place.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub request_id: String,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i32,
    pub payment_method: String,
}

impl Purchase {
    fn request(&self) -> CreateOrderRequest {
        CreateOrderRequest {
            request_id: self.request_id.clone(),
            user_id: self.user_id.clone(),
            items: vec![OrderItem {
                product_id: self.product_id.clone(),
                quantity: self.quantity,
                unit_price: None,
            }],
            payment_method: self.payment_method.clone(),
        }
    }
}

/// Places every purchase, `concurrency` at a time; returns the answers in
/// the purchases' order (PENDING, CONFIRMED or CANCELLED as answered).
/// A call that fails (UNAVAILABLE while a process restarts, say) is
/// retried with the same request_id for up to `give_up_after`.
pub async fn place_all(
    orders: &OrderServiceClient<AuthedChannel>,
    purchases: Vec<Purchase>,
    concurrency: usize,
    give_up_after: Duration,
) -> Vec<Order> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let calls: Vec<_> = purchases
        .into_iter()
        .map(|purchase| {
            let mut client = orders.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore open");
                let started = tokio::time::Instant::now();
                loop {
                    match client.create_order(purchase.request()).await {
                        Ok(answer) => return answer.into_inner().order.expect("order"),
                        Err(status) => {
                            assert!(
                                started.elapsed() < give_up_after,
                                "{}: no answer within {give_up_after:?}, last {status:?}",
                                purchase.request_id
                            );
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        answers.push(call.await.expect("shopper task"));
    }
    answers
}
