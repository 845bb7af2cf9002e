-- Personal data in args (policy `pii = true`): which args of a proposal were
-- personal data when it was made (a JSON array of arg names; NULL: none), and
-- when their values were erased. The args hash stays: the audit chain, which
-- holds hashes and never values, still verifies after erasure.
ALTER TABLE proposals ADD COLUMN pii_fields TEXT;
ALTER TABLE proposals ADD COLUMN pii_erased_at BIGINT;

-- The proposals that still hold personal data, oldest first: what erasure
-- looks through. A proposal leaves the index once erased, and one without
-- personal data is never in it.
CREATE INDEX proposals_pii_kept ON proposals (created_at)
    WHERE pii_fields IS NOT NULL AND pii_erased_at IS NULL;
