"""Workspaces and accounts: one package for who may act, where, in the services layer.

- `access`: the `WorkspaceContext` (who is acting, in which workspace, with which role),
  resolved per request by `context_for`, and `get_in_workspace`, the lookup every domain's
  own `access` module builds on; `lock` serializes a check-then-write on one workspace;
- `members`: a workspace's members invited, given a role and removed (owners only; the last
  owner stays);
- `service`: workspaces created (by their owner, or by an administrator for a team) and
  listed for the administrators;
- `users`: accounts, passwords, sign-in and the first-admin bootstrap;
- `sessions`, `tokens`: the two credentials, a browser session's cookie and an API token;
- `login_throttle`: the pause after repeated failed sign-ins (counted in the audit log);
- `audit`: the audit log, one `record` per state change in the change's own transaction.

Import the modules themselves (`from app.services.workspaces import access as
workspace_access`); this file re-exports nothing, so importing one module never loads the
others.
"""
