//! The lifecycle of one handler instance as an explicit state machine.
//!
//! [`transition`] is the only way to change an [`InstanceState`]; every
//! `(state, event)` pair not in the table below is rejected with
//! [`InvalidTransition`] and leaves the state unchanged.
//!
//! ```text
//!   Starting --Spawned--> Handshake --HandshakeOk--> Ready --RequestBegan--> Serving
//!      |                      |                        |  ^                  |  ^ |
//!      |                      |                        |  |  RequestBegan    |  | RequestBegan
//!      |                      |                        |  +---(Idle)<--------+--+ RequestsDone
//!      |                      |                        |         |
//!      +--HandshakeFailed-----+--> Failed              |         |
//!      |                      |                        v         v
//!      +--------Drain---------+--------Drain------> Draining --Exited--> Gone
//!  live state (Starting..Idle) --Exited--> Failed   (an exit nobody asked for)
//! ```
//!
//! `Gone` and `Failed` are terminal.

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Process being created (namespaces, cgroup, exec).
    Starting,
    /// Process runs; waiting for `READY` and for the port to accept.
    Handshake,
    /// Handshake done, never served a request yet.
    Ready,
    /// At least one request in flight.
    Serving,
    /// Served before, nothing in flight now.
    Idle,
    /// Asked to stop; takes no new requests.
    Draining,
    /// Stopped after being asked to (terminal).
    Gone,
    /// Died or failed its handshake without being asked to stop (terminal).
    Failed,
}

impl InstanceState {
    /// True for `Gone` and `Failed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Gone | Self::Failed)
    }

    /// True when the gateway may send requests to it.
    pub fn accepts_requests(self) -> bool {
        matches!(self, Self::Ready | Self::Serving | Self::Idle)
    }
}

/// Something that happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleEvent {
    /// The handler process exists (exec succeeded).
    Spawned,
    /// `READY` received and the trigger port accepts connections.
    HandshakeOk,
    /// Timeout, garbage or early exit during the handshake.
    HandshakeFailed,
    /// A request was handed to the instance.
    RequestBegan,
    /// The last in-flight request finished.
    RequestsDone,
    /// Stop taking requests and shut down.
    Drain,
    /// The process is gone (reaped).
    Exited,
}

/// A `(state, event)` pair the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("instance in state {from:?} cannot take event {event:?}")]
pub struct InvalidTransition {
    /// State the instance was (and stays) in.
    pub from: InstanceState,
    /// The rejected event.
    pub event: LifecycleEvent,
}

/// The transition table: the next state, or `InvalidTransition`.
pub fn transition(
    from: InstanceState,
    event: LifecycleEvent,
) -> Result<InstanceState, InvalidTransition> {
    use InstanceState as S;
    use LifecycleEvent as E;
    let next = match (from, event) {
        (S::Starting, E::Spawned) => S::Handshake,
        (S::Handshake, E::HandshakeOk) => S::Ready,
        (S::Starting | S::Handshake, E::HandshakeFailed) => S::Failed,
        (S::Ready | S::Idle | S::Serving, E::RequestBegan) => S::Serving,
        (S::Serving, E::RequestsDone) => S::Idle,
        (S::Starting | S::Handshake | S::Ready | S::Serving | S::Idle, E::Drain) => S::Draining,
        (S::Draining, E::Exited) => S::Gone,
        (S::Starting | S::Handshake | S::Ready | S::Serving | S::Idle, E::Exited) => S::Failed,
        _ => return Err(InvalidTransition { from, event }),
    };
    Ok(next)
}

/// An instance's current state; changes only through [`Lifecycle::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    state: InstanceState,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A lifecycle in `Starting`.
    pub fn new() -> Self {
        Self {
            state: InstanceState::Starting,
        }
    }

    /// The current state.
    pub fn state(&self) -> InstanceState {
        self.state
    }

    /// Apply `event`; on error the state is unchanged.
    pub fn apply(&mut self, event: LifecycleEvent) -> Result<InstanceState, InvalidTransition> {
        let next = transition(self.state, event)?;
        self.state = next;
        Ok(next)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_reaches_gone() {
        let mut l = Lifecycle::new();
        for e in [
            LifecycleEvent::Spawned,
            LifecycleEvent::HandshakeOk,
            LifecycleEvent::RequestBegan,
            LifecycleEvent::RequestsDone,
            LifecycleEvent::RequestBegan,
            LifecycleEvent::Drain,
            LifecycleEvent::Exited,
        ] {
            assert!(l.apply(e).is_ok(), "{e:?} from {:?}", l.state());
        }
        assert_eq!(l.state(), InstanceState::Gone);
    }

    #[test]
    fn terminal_states_reject_everything() {
        let mut l = Lifecycle::new();
        assert_eq!(
            l.apply(LifecycleEvent::HandshakeFailed),
            Ok(InstanceState::Failed)
        );
        let err = l.apply(LifecycleEvent::Spawned);
        assert_eq!(
            err,
            Err(InvalidTransition {
                from: InstanceState::Failed,
                event: LifecycleEvent::Spawned
            })
        );
        assert_eq!(l.state(), InstanceState::Failed);
    }
}
