//! The in-flight byte budget of the ext_authz endpoint: the memory that
//! requests being received and decoded may hold together, before any of
//! them is authenticated.
//!
//! tonic buffers a whole request message before the handler runs, and
//! reserves its declared length as soon as it reads the 5-byte gRPC prefix.
//! So each request's body is wrapped here: from its first bytes it takes from
//! one shared budget the larger of what has arrived and what its prefix
//! declares (a length over the message limit is tonic's to refuse, with
//! `OUT_OF_RANGE`), and gives it back when the request is answered. A request
//! that does not fit is refused at once with `RESOURCE_EXHAUSTED`: refusing
//! is what keeps a flood of slow, large requests from holding memory without
//! bound, and Envoy turns the error into its `status_on_error`.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use http_body::Frame;
use tonic::{
    Status,
    body::Body,
    codegen::{Bytes, Service, http},
    server::NamedService,
};

use crate::metrics::Metrics;

/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX_LEN: usize = 5;

/// Bytes that requests in flight may hold together.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held right now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What one request holds of the budget. Shared by its body and its
/// response future, and given back when the last of them is dropped: the
/// decoded message lives until the handler has answered.
#[derive(Debug)]
struct Hold {
    budget: Arc<ByteBudget>,
    held: AtomicUsize,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.give_back(*self.held.get_mut());
    }
}

/// A request body that takes its bytes from the budget before passing them on.
struct BudgetedBody {
    inner: Body,
    hold: Arc<Hold>,
    max_message: usize,
    metrics: Arc<Metrics>,
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    arrived: usize,
}

impl BudgetedBody {
    /// Takes what `data` makes this request hold, or refuses it.
    fn account(&mut self, data: &Bytes) -> Result<(), Status> {
        self.arrived = self.arrived.saturating_add(data.len());
        for &byte in data.iter().take(PREFIX_LEN - self.prefix_len) {
            self.prefix[self.prefix_len] = byte;
            self.prefix_len += 1;
        }
        let declared = if self.prefix_len == PREFIX_LEN {
            let [_, a, b, c, d] = self.prefix;
            match usize::try_from(u32::from_be_bytes([a, b, c, d])) {
                Ok(length) if length <= self.max_message => PREFIX_LEN + length,
                // The decoder refuses it (OUT_OF_RANGE) on this prefix.
                _ => 0,
            }
        } else {
            0
        };
        let wanted = self.arrived.max(declared);
        let held = self.hold.held.load(Ordering::Acquire);
        if wanted > held {
            if !self.hold.budget.try_take(wanted - held) {
                self.metrics.record_ext_authz_shed();
                return Err(Status::resource_exhausted(
                    "ext_authz requests in flight hold ext_authz.max_in_flight_bytes: retry",
                ));
            }
            self.hold.held.store(wanted, Ordering::Release);
        }
        Ok(())
    }
}

impl http_body::Body for BudgetedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(status) = this.account(data)
        {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The ext_authz service with its requests' bodies under the budget.
#[derive(Clone, Debug)]
pub struct InFlightBudget<S> {
    inner: S,
    budget: Arc<ByteBudget>,
    max_message: usize,
    metrics: Arc<Metrics>,
}

impl<S> InFlightBudget<S> {
    /// `inner` with at most `budget` bytes in flight, for messages of at
    /// most `max_message` bytes (the decoder's own limit).
    pub fn new(
        inner: S,
        budget: Arc<ByteBudget>,
        max_message: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            budget,
            max_message,
            metrics,
        }
    }
}

impl<S: NamedService> NamedService for InFlightBudget<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for InFlightBudget<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let hold = Arc::new(Hold {
            budget: Arc::clone(&self.budget),
            held: AtomicUsize::new(0),
        });
        let request = request.map(|inner| {
            Body::new(BudgetedBody {
                inner,
                hold: Arc::clone(&hold),
                max_message: self.max_message,
                metrics: Arc::clone(&self.metrics),
                prefix: [0; PREFIX_LEN],
                prefix_len: 0,
                arrived: 0,
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(hold);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn body(hold: &Arc<Hold>, metrics: &Arc<Metrics>) -> BudgetedBody {
        BudgetedBody {
            inner: Body::empty(),
            hold: Arc::clone(hold),
            max_message: 1000,
            metrics: Arc::clone(metrics),
            prefix: [0; PREFIX_LEN],
            prefix_len: 0,
            arrived: 0,
        }
    }

    fn prefix(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(length.to_be_bytes());
        bytes
    }

    #[test]
    fn a_message_holds_its_declared_length_from_its_first_bytes_until_answered() {
        let metrics = Metrics::new(None, Duration::from_secs(60)).unwrap();
        let budget = ByteBudget::new(2_000);
        let hold = Arc::new(Hold {
            budget: Arc::clone(&budget),
            held: AtomicUsize::new(0),
        });
        let mut first = body(&hold, &metrics);
        // The prefix split over two frames: nothing is declared until it is whole.
        first
            .account(&Bytes::from(prefix(800)[..3].to_vec()))
            .unwrap();
        assert_eq!(budget.in_use(), 3);
        first
            .account(&Bytes::from(prefix(800)[3..].to_vec()))
            .unwrap();
        assert_eq!(budget.in_use(), 805);
        first.account(&Bytes::from(vec![0; 700])).unwrap();
        assert_eq!(budget.in_use(), 805, "arrived within what was declared");

        // A second request declaring more than the message limit holds only
        // what arrived (the decoder refuses the message on its prefix)...
        let too_long = Arc::new(Hold {
            budget: Arc::clone(&budget),
            held: AtomicUsize::new(0),
        });
        body(&too_long, &metrics)
            .account(&Bytes::from(prefix(u32::MAX)))
            .unwrap();
        assert_eq!(budget.in_use(), 805 + 5);
        drop(too_long);
        // ...a third declaring the limit holds it...
        let other = Arc::new(Hold {
            budget: Arc::clone(&budget),
            held: AtomicUsize::new(0),
        });
        let mut second = body(&other, &metrics);
        second.account(&Bytes::from(prefix(1000))).unwrap();
        assert_eq!(budget.in_use(), 805 + 1005);
        // ...and a fourth that does not fit is refused, holding nothing.
        let third = Arc::new(Hold {
            budget: Arc::clone(&budget),
            held: AtomicUsize::new(0),
        });
        let refused = body(&third, &metrics)
            .account(&Bytes::from(prefix(500)))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(budget.in_use(), 1810);
        drop(third);

        // Answered: the body and the response future are gone.
        drop(first);
        assert_eq!(budget.in_use(), 1810, "the response future still holds it");
        drop(hold);
        assert_eq!(budget.in_use(), 1005);
        drop((second, other));
        assert_eq!(budget.in_use(), 0);
        let text = metrics.render_prometheus().unwrap();
        assert!(
            text.lines()
                .any(|l| l == "tokenauth_ext_authz_shed_total 1"),
            "{text}"
        );
    }
}
