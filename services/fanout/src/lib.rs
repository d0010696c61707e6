//! Corral's fanout service (work in progress).
