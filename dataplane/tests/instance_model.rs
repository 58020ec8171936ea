//! The instance lifecycle (`Lifecycle::apply`) against a reference model: a
//! plain list of allowed `(from, event, to)` triples. Random event sequences,
//! valid and invalid, must leave both in the same state; every event the
//! table does not list must be rejected without changing the state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dataplane::instance::state::{
    InstanceState as S, InvalidTransition, Lifecycle, LifecycleEvent as E,
};
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

/// The reference table, written independently of `state::transition`.
const TABLE: &[(S, E, S)] = &[
    (S::Starting, E::Spawned, S::Handshake),
    (S::Starting, E::HandshakeFailed, S::Failed),
    (S::Starting, E::Drain, S::Draining),
    (S::Starting, E::Exited, S::Failed),
    (S::Handshake, E::HandshakeOk, S::Ready),
    (S::Handshake, E::HandshakeFailed, S::Failed),
    (S::Handshake, E::Drain, S::Draining),
    (S::Handshake, E::Exited, S::Failed),
    (S::Ready, E::RequestBegan, S::Serving),
    (S::Ready, E::Drain, S::Draining),
    (S::Ready, E::Exited, S::Failed),
    (S::Serving, E::RequestBegan, S::Serving),
    (S::Serving, E::RequestsDone, S::Idle),
    (S::Serving, E::Drain, S::Draining),
    (S::Serving, E::Exited, S::Failed),
    (S::Idle, E::RequestBegan, S::Serving),
    (S::Idle, E::Drain, S::Draining),
    (S::Idle, E::Exited, S::Failed),
    (S::Draining, E::Exited, S::Gone),
];

const EVENTS: [E; 7] = [
    E::Spawned,
    E::HandshakeOk,
    E::HandshakeFailed,
    E::RequestBegan,
    E::RequestsDone,
    E::Drain,
    E::Exited,
];

fn model_next(from: S, ev: E) -> Option<S> {
    TABLE
        .iter()
        .find(|(f, e, _)| *f == from && *e == ev)
        .map(|(_, _, t)| *t)
}

#[derive(Debug, Clone)]
struct Model {
    state: S,
    last_allowed: bool,
}

struct LifecycleModel;

impl ReferenceStateMachine for LifecycleModel {
    type State = Model;
    type Transition = E;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            state: S::Starting,
            last_allowed: true,
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<E> {
        // Bias toward allowed events so long lives are explored, but keep
        // every event possible so rejections are tested from every state.
        let allowed: Vec<E> = EVENTS
            .iter()
            .copied()
            .filter(|e| model_next(state.state, *e).is_some())
            .collect();
        let any = proptest::sample::select(EVENTS.to_vec());
        if allowed.is_empty() {
            any.boxed()
        } else {
            prop_oneof![3 => proptest::sample::select(allowed), 1 => any].boxed()
        }
    }

    fn apply(mut state: Model, ev: &E) -> Model {
        match model_next(state.state, *ev) {
            Some(next) => {
                state.state = next;
                state.last_allowed = true;
            }
            None => state.last_allowed = false,
        }
        state
    }
}

struct LifecycleTest;

impl StateMachineTest for LifecycleTest {
    type SystemUnderTest = Lifecycle;
    type Reference = LifecycleModel;

    fn init_test(_: &Model) -> Lifecycle {
        Lifecycle::new()
    }

    fn apply(mut sut: Lifecycle, model: &Model, ev: E) -> Lifecycle {
        let before = sut.state();
        let got = sut.apply(ev);
        if model.last_allowed {
            assert_eq!(got, Ok(model.state), "{before:?} --{ev:?}-->");
        } else {
            assert_eq!(
                got,
                Err(InvalidTransition {
                    from: before,
                    event: ev
                })
            );
            assert_eq!(sut.state(), before, "a rejected event changed the state");
        }
        sut
    }

    fn check_invariants(sut: &Lifecycle, model: &Model) {
        assert_eq!(sut.state(), model.state);
        assert_eq!(
            sut.state().accepts_requests(),
            matches!(model.state, S::Ready | S::Serving | S::Idle)
        );
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn lifecycle_matches_reference_table(sequential 1..40 => LifecycleTest);
}

#[test]
fn table_covers_exactly_the_allowed_pairs() {
    let states = [
        S::Starting,
        S::Handshake,
        S::Ready,
        S::Serving,
        S::Idle,
        S::Draining,
        S::Gone,
        S::Failed,
    ];
    for s in states {
        for e in EVENTS {
            assert_eq!(
                dataplane::instance::state::transition(s, e).ok(),
                model_next(s, e),
                "{s:?} --{e:?}-->"
            );
        }
    }
}
