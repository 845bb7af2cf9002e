// Shared by the browser tests: people, credentials and small actions.
// scripts/e2e creates the people and exports CS_BIN and DATABASE_URL, so the
// tests can use the real command line against the server's database.
import { execFileSync } from "node:child_process";
import { expect, Page, APIRequestContext } from "@playwright/test";

export const PASSWORD = "correct horse battery staple";

export function cli(args: string[], input?: string): string {
  const bin = process.env.CS_BIN;
  if (!bin) throw new Error("CS_BIN is not set: run the browser tests through scripts/e2e");
  return execFileSync(bin, args, { input, env: process.env, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] }).trim();
}

export async function hydrated(page: Page) {
  await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
}

export async function signIn(page: Page, username: string, password = PASSWORD) {
  await page.goto("/login");
  await hydrated(page);
  await page.getByLabel("Username", { exact: true }).fill(username);
  await page.getByLabel("Password", { exact: true }).fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
}

/** A service key for tenant/env, made with the command line. */
export function serviceKey(tenant: string, env: string): string {
  return cli(["key", "create", "service", "--tenant", tenant, "--env", env, "--name", `e2e-${tenant}-${env}`]);
}

export async function mintRun(
  request: APIRequestContext,
  key: string,
  route: string,
  onBehalfOf?: string,
): Promise<string> {
  const res = await request.post("/api/v1/runs", {
    headers: { Authorization: `Bearer ${key}` },
    data: { route, ttl_seconds: 600, ...(onBehalfOf ? { on_behalf_of: onBehalfOf } : {}) },
  });
  expect(res.status(), await res.text()).toBe(201);
  return (await res.json()).token;
}

export async function propose(request: APIRequestContext, token: string, body: object): Promise<any> {
  const res = await request.post("/api/v1/proposals", {
    headers: { Authorization: `Bearer ${token}` },
    data: body,
  });
  expect(res.status(), await res.text()).toBe(201);
  return res.json();
}

let counter = 0;
export function uniqueKey(prefix: string): string {
  counter += 1;
  return `${prefix}-${Date.now()}-${counter}`;
}

/** A tenant of this test's own, so queues hold only what the test made. */
export function newTenant(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`;
}

export function addUser(name: string, role: string, tenant?: string) {
  const args = ["user", "add", name, "--role", role];
  if (tenant) args.push("--tenant", tenant);
  cli(args, PASSWORD + "\n");
}

/** The session's CSRF token, as any signed-in page carries it (sign-out form). */
export async function csrfOf(page: Page): Promise<string> {
  const v = await page.locator('input[name="csrf"]').first().getAttribute("value");
  if (!v) throw new Error("no CSRF token on the page");
  return v;
}
