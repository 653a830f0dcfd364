//! The backend conformance suite: the behaviour every [`crate::Backend`] must show, written
//! once and run against each backend by that backend's own tests.
