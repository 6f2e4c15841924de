//! The server and client layers of [`super`].

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::task::futures::TaskLocalFuture;

use tower_layer::Layer;
use tower_service::Service;

use super::{CURRENT, CallVariants, HEADER, Variants};

/// [`HEADER`] parsed once (a lookup by `&str` parses the name each time).
static HEADER_NAME: http::HeaderName = http::HeaderName::from_static(HEADER);

/// Server side: the call's variants in its extensions and task, and in the
/// answer's header.
#[derive(Debug, Clone, Copy, Default)]
pub struct VariantServerLayer;

impl<S> Layer<S> for VariantServerLayer {
    type Service = VariantServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VariantServerService { inner }
    }
}

/// See [`VariantServerLayer`].
#[derive(Debug, Clone)]
pub struct VariantServerService<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for VariantServerService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = VariantFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let incoming = request
            .headers()
            .get(&HEADER_NAME)
            .and_then(|v| v.to_str().ok())
            .map(Variants::parse)
            .unwrap_or_default();
        let variants = CallVariants::new(incoming);
        request.extensions_mut().insert(variants.clone());
        let fut = self.inner.call(request);
        VariantFuture {
            fut: CURRENT.scope(variants.clone(), fut),
            variants,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`VariantServerService`]: the handler's, with
    /// the call's variants as its task local; the answer gets their header.
    pub struct VariantFuture<F> {
        #[pin]
        fut: TaskLocalFuture<CallVariants, F>,
        variants: CallVariants,
    }
}

impl<F, R, E> Future for VariantFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut response = ready!(this.fut.poll(cx))?;
        if let Some(value) = this.variants.to_header() {
            response.headers_mut().insert(HEADER_NAME.clone(), value);
        }
        Poll::Ready(Ok(response))
    }
}

/// Client side: outgoing requests made while serving a call carry its variants.
#[derive(Debug, Clone, Copy, Default)]
pub struct VariantClientLayer;

impl<S> Layer<S> for VariantClientLayer {
    type Service = VariantClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VariantClientService { inner }
    }
}

/// See [`VariantClientLayer`].
#[derive(Debug, Clone)]
pub struct VariantClientService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for VariantClientService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.headers().contains_key(&HEADER_NAME)
            && let Some(value) = CallVariants::current().and_then(|v| v.to_header())
        {
            request.headers_mut().insert(HEADER_NAME.clone(), value);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, sync::Arc};

    use tokio::sync::Mutex;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;

    /// A caller → a service that assigns one experiment and calls a
    /// downstream service → the downstream sees both variants; the caller
    /// gets them in the answer's header.
    #[tokio::test]
    async fn a_variant_reaches_the_downstream_service_and_the_answer() {
        let seen_downstream = Arc::new(Mutex::new(None));
        let seen = seen_downstream.clone();
        let downstream = ServiceBuilder::new()
            .layer(VariantServerLayer)
            .service(service_fn(move |request: http::Request<()>| {
                let seen = seen.clone();
                async move {
                    let variants = request.extensions().get::<CallVariants>().cloned();
                    *seen.lock().await = variants.map(|v| v.snapshot());
                    Ok::<_, Infallible>(http::Response::new(()))
                }
            }));
        let client = ServiceBuilder::new()
            .layer(VariantClientLayer)
            .service(downstream);
        let middle = ServiceBuilder::new()
            .layer(VariantServerLayer)
            .service(service_fn(move |request: http::Request<()>| {
                let client = client.clone();
                async move {
                    let variants = request
                        .extensions()
                        .get::<CallVariants>()
                        .cloned()
                        .unwrap_or_default();
                    assert_eq!(variants.get("checkout-fee").as_deref(), Some("v1"));
                    variants.record("page-size", "large");
                    client.oneshot(http::Request::new(())).await?;
                    Ok::<_, Infallible>(http::Response::new(()))
                }
            }));
        let request = http::Request::builder()
            .header(HEADER, "checkout-fee=v1")
            .body(())
            .unwrap_or_default();
        let response = middle.oneshot(request).await.unwrap_or_default();
        assert_eq!(
            response.headers().get(HEADER).and_then(|v| v.to_str().ok()),
            Some("checkout-fee=v1,page-size=large")
        );
        let downstream = seen_downstream.lock().await.clone().unwrap_or_default();
        assert_eq!(downstream.get("checkout-fee"), Some("v1"));
        assert_eq!(downstream.get("page-size"), Some("large"));
    }

    #[tokio::test]
    async fn without_a_call_nothing_is_added() {
        let client = ServiceBuilder::new()
            .layer(VariantClientLayer)
            .service(service_fn(|request: http::Request<()>| async move {
                Ok::<_, Infallible>(request.headers().contains_key(HEADER))
            }));
        assert_eq!(client.oneshot(http::Request::new(())).await, Ok(false));
    }
}
