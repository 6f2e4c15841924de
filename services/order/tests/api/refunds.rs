//! Cancelling an order that was partly refunded already, or has a refund
//! still in flight: the cancellation returns what is left of the capture,
//! never less and never twice.

use std::{collections::HashMap, time::Duration};

use mercato_proto::{
    common::v1::Money,
    order::v1::{CancelOrderRequest, OrderStatus},
    payment::v1::{GetPaymentRequest, Payment, PaymentStatus, RefundRequest},
    user::v1::UserStatus,
};

use crate::{
    invariants::check,
    providers::{Release, holding_refunds},
    support::*,
};

mercato_testkit::on_both_backends!(
    a_partial_refund_then_cancel_refunds_the_rest,
    a_refund_in_flight_then_cancel_refunds_exactly_the_rest
);

fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: minor,
    })
}

async fn a_partial_refund_then_cancel_refunds_the_rest(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    let user = s.user("partial@example.com", UserStatus::Active).await;
    s.product("lamp", 1000, 5).await;
    let order = s
        .place("r-1", &user, &[("lamp", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Confirmed);
    // Support refunds 20 % as a goodwill gesture, then the customer cancels.
    s.payments
        .refund(RefundRequest {
            idempotency_key: "goodwill-1".into(),
            payment_id: order.payment_id.clone(),
            amount: usd(200),
        })
        .await
        .unwrap();
    let cancelled = s
        .orders
        .cancel_order(CancelOrderRequest {
            order_id: order.order_id.clone(),
            reason: "changed my mind".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    let payment = s
        .payments
        .get_payment(GetPaymentRequest {
            payment_id: order.payment_id,
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(payment.status(), PaymentStatus::Refunded);
    assert_eq!(payment.refunded_amount, usd(1000), "the other 80 % too");
    check(&mut s, &[user], &HashMap::from([("lamp".to_owned(), 5)]))
        .await
        .assert_clean();
}

async fn payment(s: &mut Suite, payment_id: &str) -> Payment {
    s.payments
        .get_payment(GetPaymentRequest {
            payment_id: payment_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap()
}

/// An admin's refund of 200 is still at the provider when the customer
/// cancels. The cancellation refunds the 800 that are free at once, waits
/// for the held 200, and then — whether that refund completes or is given
/// up — the payment ends refunded exactly once in full.
async fn a_refund_in_flight_then_cancel_refunds_exactly_the_rest(db: Db) {
    let (provider, gate) = holding_refunds("admin-");
    let mut s = Suite::start_with(db, Timing::ShippedDefaults, Some(provider), |_| {}).await;
    let user = s.user("inflight@example.com", UserStatus::Active).await;
    s.product("chair", 1000, 5).await;
    for (round, outcome) in [("1", Release::Complete), ("2", Release::Fail)] {
        gate.lock().unwrap().send_replace(Release::Hold);
        let order = s
            .place(&format!("r-{round}"), &user, &[("chair", 1)], "pm_approve")
            .await
            .unwrap();
        assert_eq!(order.status(), OrderStatus::Confirmed);
        let mut payments = s.payments.clone();
        let admin_refund = tokio::spawn({
            let payment_id = order.payment_id.clone();
            async move {
                payments
                    .refund(RefundRequest {
                        idempotency_key: format!("admin-{round}"),
                        payment_id,
                        amount: usd(200),
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await; // its 200 are reserved now

        let waiting = s
            .cancel_within(&order.order_id, Duration::from_millis(1500))
            .await;
        assert_eq!(
            waiting.status(),
            OrderStatus::Confirmed,
            "the cancellation waits for the refund in flight"
        );
        let partial = payment(&mut s, &order.payment_id).await;
        assert_eq!(
            partial.refunded_amount,
            usd(800),
            "what was free is refunded at once"
        );

        gate.lock().unwrap().send_replace(outcome);
        let admin = admin_refund.await.unwrap();
        assert_eq!(admin.is_ok(), outcome == Release::Complete, "{admin:?}");
        s.wait_for_status(&order.order_id, OrderStatus::Cancelled)
            .await;
        let refunded = payment(&mut s, &order.payment_id).await;
        assert_eq!(refunded.status(), PaymentStatus::Refunded, "round {round}");
        assert_eq!(refunded.refunded_amount, usd(1000), "round {round}");
    }
    check(&mut s, &[user], &HashMap::from([("chair".to_owned(), 5)]))
        .await
        .assert_clean();
}
