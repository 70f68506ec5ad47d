//! The thinking budget under a capped `max_tokens`.
//!
//! Anthropic (and Bedrock's Claude models) refuse `budget_tokens` that is
//! not below `max_tokens`, and any budget under 1024. Claude Code asks for
//! `max_tokens: 32000` with `budget_tokens: 31999`; a provider whose
//! `capabilities.max_output_tokens` caps `max_tokens` at 8192 must lower the
//! budget with it. The rule: a budget that no longer fits is lowered to
//! `max_tokens - 1`; if that is under the minimum, thinking is left out.
//! A budget that fits is sent as the client gave it.

/// The smallest budget Anthropic accepts.
pub const MIN_BUDGET_TOKENS: u64 = 1024;

/// The budget to send with `max_tokens` (after any cap), or `None` to
/// leave thinking out.
pub fn budget_within(budget_tokens: u64, max_tokens: u64) -> Option<u64> {
    if budget_tokens < max_tokens {
        return Some(budget_tokens);
    }
    let lowered = max_tokens.saturating_sub(1);
    (lowered >= MIN_BUDGET_TOKENS).then_some(lowered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stays_below_max_tokens() {
        // Claude Code's request under an 8192 cap.
        assert_eq!(budget_within(31_999, 8192), Some(8191));
        // A budget that fits is untouched.
        assert_eq!(budget_within(4000, 8192), Some(4000));
        assert_eq!(budget_within(31_999, 32_000), Some(31_999));
        // No room for the minimum: thinking is left out.
        assert_eq!(budget_within(2000, 1024), None);
        assert_eq!(budget_within(2000, 1025), Some(1024));
        assert_eq!(budget_within(5, 0), None);
    }
}
