//! Logging for the cloud's binaries: the embedded broker's lifecycle noise is dropped,
//! its real trouble kept.
//!
//! rumqttd logs at ERROR level every client's disconnect (`router-drop`, `disconnected`,
//! `connection-stop`) and some races of a connection that is already gone. A fleet of
//! devices that come and go would fill the log with errors that are none. Everything else
//! it says (a full broker, a duplicate client id, a socket it cannot accept, its router
//! stopping) stays.

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// A layer that turns off the embedded broker's connection-lifecycle events.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietBrokerLifecycle;

impl<S: Subscriber> Layer<S> for QuietBrokerLifecycle {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        if !event.metadata().target().starts_with("rumqttd") {
            return true;
        }
        let mut message = Message(None);
        event.record(&mut message);
        !message.0.as_deref().is_some_and(is_lifecycle)
    }
}

/// Whether a rumqttd message only says that a connection ended.
fn is_lifecycle(message: &str) -> bool {
    matches!(
        message,
        "router-drop" | "disconnected" | "connection-stop" | "Connection is already disconnected"
    ) || (message.starts_with("no-connection id ") && message.ends_with(" is already gone"))
}

struct Message(Option<String>);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Records the message of every event that reaches it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut m = Message(None);
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0.unwrap_or_default());
        }
    }

    #[test]
    fn the_brokers_disconnect_errors_are_dropped_and_its_real_trouble_kept() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(QuietBrokerLifecycle)
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            let e = "Recv(Disconnected)";
            tracing::error!(target: "rumqttd::server::broker", error = ?e, "router-drop");
            tracing::error!(target: "rumqttd::server::broker", error = ?e, "disconnected");
            tracing::error!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 7);
            tracing::error!(target: "rumqttd::router::routing", "no space for new connection");
            tracing::error!(target: "rumqttd::server::broker", error = ?e, "Unable to accept socket.");
            tracing::error!(target: "rollcall_cloud::worker", "disconnected");
        });
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "no space for new connection",
                "Unable to accept socket.",
                "disconnected"
            ]
        );
    }
}
