//! Corral's identity service (work in progress).
