//! Corral's identity service (work in progress).
fn main() -> anyhow::Result<()> {
    anyhow::bail!("corral-identity is not implemented yet")
}
