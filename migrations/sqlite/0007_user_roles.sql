-- Roles as rows (one per person and role) instead of a comma-joined column
-- matched with LIKE: a query for "reviewers of acme" is an indexed join.
CREATE TABLE user_roles (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role    TEXT NOT NULL CHECK (role IN ('reviewer', 'auditor', 'admin')),
    PRIMARY KEY (user_id, role)
);
CREATE INDEX user_roles_by_role ON user_roles (role, user_id);

INSERT INTO user_roles (user_id, role)
SELECT id, 'reviewer' FROM users WHERE (',' || roles || ',') LIKE '%,reviewer,%';
INSERT INTO user_roles (user_id, role)
SELECT id, 'auditor' FROM users WHERE (',' || roles || ',') LIKE '%,auditor,%';
INSERT INTO user_roles (user_id, role)
SELECT id, 'admin' FROM users WHERE (',' || roles || ',') LIKE '%,admin,%';

ALTER TABLE users DROP COLUMN roles;
