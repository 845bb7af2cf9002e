// The ten-second review: queue, review screen, decisions, the approver rules.
import { test, expect, Page } from "@playwright/test";
import { addUser, cli, csrfOf, hydrated, mintRun, newTenant, propose, serviceKey, signIn, uniqueKey } from "./helpers";

const ticket = (key: string) => ({
  tool: "ticket.close",
  args: { ticket_id: "T-18421", reason: "Issue resolved: reset auth token and verified login" },
  idempotency_key: key,
  reason: "Customer confirmed the fix",
  preview: { before: "status: open\nassignee: bob", after: "status: closed\nassignee: bob" },
});

const refund = (key: string) => ({
  tool: "refund.create",
  args: { customer_id: "C-42", amount_cents: 2500, currency: "EUR" },
  idempotency_key: key,
  reason: "Double charge on invoice 7731",
});

async function signInFresh(page: Page, user: string) {
  await page.context().clearCookies();
  await signIn(page, user);
  await expect(page.getByRole("navigation", { name: "Main" })).toContainText(user);
}

test("a reviewer approves a single-approver action with the keyboard only", async ({ page, request }) => {
  const tenant = newTenant("kbd");
  const reviewer = `kim-${tenant}`;
  addUser(reviewer, "reviewer", tenant);
  const token = await mintRun(request, serviceKey(tenant, "prod"), "support/send");
  const p = await propose(request, token, ticket(uniqueKey("kbd")));

  // Sign in with the keyboard.
  await page.goto("/login");
  await hydrated(page);
  await page.getByLabel("Username", { exact: true }).focus();
  await page.keyboard.type(reviewer);
  await page.keyboard.press("Tab");
  await page.keyboard.type("correct horse battery staple");
  await page.keyboard.press("Enter");
  await expect(page.getByRole("heading", { name: "Pending approvals" })).toBeVisible();
  await hydrated(page);

  const row = page.getByRole("row").filter({ hasText: "ticket.close" });
  await expect(row).toContainText("0 of 1");
  await expect(row).toContainText(`${tenant} / prod`);
  await page.keyboard.press("j");
  await page.keyboard.press("Enter");
  await expect(page).toHaveURL(new RegExp(`/proposals/${p.id}$`));
  await expect(page.getByRole("heading", { name: "What will change" })).toBeVisible();
  await expect(page.getByRole("heading", { name: "Blast radius" })).toBeVisible();
  await expect(page.getByRole("heading", { name: "Can we undo it?" })).toBeVisible();
  await expect(page.getByText(`1 ticket of ${tenant}`)).toBeVisible();
  await expect(page.getByText("Reopen with ticket.reopen")).toBeVisible();
  await hydrated(page);

  await page.keyboard.press("a");
  await expect(page.getByText("1 of 1 approvals")).toBeVisible();
  await expect(page.locator(".markers")).toContainText("queued");
  await expect(page.getByRole("list").filter({ hasText: reviewer })).toContainText("approved");

  // The agent sees the same.
  const res = await request.get(`/api/v1/proposals/${p.id}`, { headers: { Authorization: `Bearer ${token}` } });
  expect((await res.json()).status).toBe("queued");
});

test("a destructive action needs two different reviewers, and nobody else", async ({ page, request, baseURL }) => {
  const tenant = newTenant("two");
  const [first, second, requester] = ["first", "second", "asker"].map((n) => `${n}-${tenant}`);
  for (const u of [first, second, requester]) addUser(u, "reviewer", tenant);
  const token = await mintRun(request, serviceKey(tenant, "prod"), "support/send", requester);
  const p = await propose(request, token, refund(uniqueKey("refund")));
  const url = `/proposals/${p.id}`;

  // The requester may not decide: buttons disabled, and why.
  await signInFresh(page, requester);
  await page.goto(url);
  await hydrated(page);
  await expect(page.getByRole("button", { name: "Approve" })).toBeDisabled();
  await expect(page.getByRole("button", { name: "Reject" })).toBeDisabled();
  await expect(page.getByText("You requested this")).toBeVisible();
  await expect(page.locator(".markers")).toContainText("destructive");
  await expect(page.locator(".markers")).toContainText("irreversible");
  await expect(page.getByText("No: irreversible.")).toBeVisible();

  // The first reviewer approves; then may not approve again.
  await signInFresh(page, first);
  await page.goto(url);
  await hydrated(page);
  await expect(page.getByText(`Can also decide: ${second}`)).toBeVisible();
  await page.getByRole("button", { name: "Approve" }).click();
  await expect(page.getByText("1 of 2 approvals")).toBeVisible();
  await expect(page.getByText("Needs a second reviewer: not you")).toBeVisible();
  await expect(page.getByRole("button", { name: "Approve" })).toBeDisabled();
  await page.screenshot({ path: "artifacts/review-screen.png", fullPage: true });

  // A forged second click by the same person is refused by the server too.
  const csrf = await csrfOf(page);
  const forged = await page.request.post("/api/decide", {
    headers: { Origin: baseURL! },
    form: { id: p.id, verdict: "approve", comment: "", content_hash: "whatever", csrf },
  });
  expect(forged.ok()).toBeFalsy();
  expect(await forged.text()).toContain("Needs a second reviewer: not you");
  // Nor can the requester force it.
  await signInFresh(page, requester);
  const csrf2 = await csrfOf(page);
  const forged2 = await page.request.post("/api/decide", {
    headers: { Origin: baseURL! },
    form: { id: p.id, verdict: "approve", comment: "", content_hash: "whatever", csrf: csrf2 },
  });
  expect(await forged2.text()).toContain("You requested this");

  // The second, different reviewer releases it.
  await signInFresh(page, second);
  await page.goto(url);
  await hydrated(page);
  await page.getByRole("button", { name: "Approve" }).click();
  await expect(page.getByText("2 of 2 approvals")).toBeVisible();
  await expect(page.locator(".markers")).toContainText("queued");
});

test("a rejection needs a comment, and the comment is kept", async ({ page, request }) => {
  const tenant = newTenant("rej");
  const reviewer = `rita-${tenant}`;
  addUser(reviewer, "reviewer", tenant);
  const token = await mintRun(request, serviceKey(tenant, "prod"), "support/send");
  const p = await propose(request, token, ticket(uniqueKey("rej")));
  await signInFresh(page, reviewer);
  await page.goto(`/proposals/${p.id}`);
  await hydrated(page);
  await page.getByRole("button", { name: "Reject" }).click();
  await expect(page.getByRole("alert").filter({ hasText: "A rejection needs a comment" })).toBeVisible();
  await expect(page.getByLabel("Comment")).toBeFocused();
  await page.getByLabel("Comment").fill("Wrong ticket: T-18421 is still open upstream");
  await page.getByRole("button", { name: "Reject" }).click();
  await expect(page.locator(".markers")).toContainText("rejected");
  await expect(page.getByText("Wrong ticket: T-18421 is still open upstream")).toBeVisible();
});

test("a reviewer of another tenant sees neither the row nor the page", async ({ page, request }) => {
  const tenant = newTenant("own");
  const other = newTenant("other");
  const outsider = `olga-${other}`;
  addUser(outsider, "reviewer", other);
  const token = await mintRun(request, serviceKey(tenant, "prod"), "support/send");
  const p = await propose(request, token, ticket(uniqueKey("iso")));
  await signInFresh(page, outsider);
  await expect(page.getByText("Nothing waiting for review")).toBeVisible();
  const res = await page.goto(`/proposals/${p.id}`);
  expect(res?.status()).toBe(404);
  await expect(page.getByRole("heading", { name: "Not found" })).toBeVisible();
  await expect(page.getByText("ticket.close")).toHaveCount(0);
});

test("the queue updates live when a proposal arrives", async ({ page, request }) => {
  const tenant = newTenant("live");
  const reviewer = `lena-${tenant}`;
  addUser(reviewer, "reviewer", tenant);
  const token = await mintRun(request, serviceKey(tenant, "prod"), "support/send");
  await signInFresh(page, reviewer);
  await hydrated(page);
  await expect(page.getByText("Nothing waiting for review")).toBeVisible();
  await propose(request, token, refund(uniqueKey("live")));
  const row = page.getByRole("row").filter({ hasText: "refund.create" });
  await expect(row).toBeVisible();
  await expect(row).toContainText("0 of 2");
  await expect(row).toContainText("destructive");
});

test("an auditor sees the history with names, exports it, and sees the chain verify", async ({ page, request }) => {
  const tenant = newTenant("aud");
  const [reviewer, auditor] = [`rob-${tenant}`, `ada-${tenant}`];
  addUser(reviewer, "reviewer", tenant);
  addUser(auditor, "auditor", tenant);
  const token = await mintRun(request, serviceKey(tenant, "prod"), "support/send", "customer-zed");
  const p = await propose(request, token, ticket(uniqueKey("aud")));
  await signInFresh(page, reviewer);
  await page.goto(`/proposals/${p.id}`);
  await hydrated(page);
  await page.getByLabel("Comment").fill("Checked with the customer");
  await page.getByRole("button", { name: "Approve" }).click();
  await expect(page.getByText("1 of 1 approvals")).toBeVisible();

  await signInFresh(page, auditor);
  await page.goto(`/history?tenant=${tenant}`);
  const row = page.getByRole("row").filter({ hasText: "ticket.close" });
  await expect(row).toContainText(reviewer);
  await expect(row).toContainText("customer-zed");
  await expect(row).toContainText("queued");
  // The auditor cannot decide.
  await page.goto(`/proposals/${p.id}`);
  await expect(page.getByRole("button", { name: "Approve" })).toBeDisabled();

  await page.goto(`/history?tenant=${tenant}`);
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("link", { name: "CSV" }).click()]);
  const csv = await (await import("node:fs/promises")).readFile((await download.path())!, "utf8");
  expect(csv.split("\n")[0]).toContain("id,created_at,tenant");
  expect(csv).toContain(p.id);
  expect(csv).toContain(`${reviewer} approve`);
  const jsonl = await page.request.get(`/export/history.jsonl?tenant=${tenant}`);
  const rows = (await jsonl.text()).trim().split("\n").map((l) => JSON.parse(l));
  expect(rows.map((r) => r.id)).toContain(p.id);

  await page.goto("/audit");
  await expect(page.getByRole("heading", { name: "Audit log" })).toBeVisible();
  await expect(page.getByRole("status").filter({ hasText: "the audit chain verifies" })).toBeVisible();
  await expect(page.getByRole("cell", { name: "decision.approve" }).first()).toBeVisible();
});

test("the review page shows the exact args and where the diff came from", async ({ page, request }) => {
  const tenant = newTenant("src");
  const reviewer = `rita-${tenant}`;
  addUser(reviewer, "reviewer", tenant);
  const token = await mintRun(request, serviceKey(tenant, "prod"), "support/send");

  // Described by the agent: shown, but marked as not checked, beside the exact args.
  const agent = await propose(request, token, ticket(uniqueKey("src")));
  await signInFresh(page, reviewer);
  await page.goto(`/proposals/${agent.id}`);
  await expect(page.getByRole("heading", { name: "Exact args (what runs)" })).toBeVisible();
  await expect(page.getByRole("row", { name: /ticket_id/ })).toContainText("T-18421");
  await expect(page.getByText("Described by the agent, not checked")).toBeVisible();

  // Computed by the executor: the agent cannot describe it, and until the
  // dry run is in, nobody can decide it.
  const assign = await propose(request, token, {
    tool: "ticket.assign",
    args: { ticket_id: "T-77", assignee: "bob" },
    idempotency_key: uniqueKey("assign"),
  });
  expect(assign.status).toBe("previewing");
  await page.goto(`/proposals/${assign.id}`);
  await expect(page.getByText("Waiting for the executor to compute what will change")).toBeVisible();
  await expect(page.getByRole("button", { name: "Approve" })).toBeDisabled();
  // From here the open page hears every change to this proposal.
  await expect(page.locator("body")).toHaveAttribute("data-live", "open");

  const exec = cli(["key", "create", "executor", "--env", "prod", "--tools", "ticket.assign", "--name", `e2e-${tenant}`, "--policy", "../examples/policy.toml"]);
  const claimed = await request.post("/api/v1/jobs/claim", {
    headers: { Authorization: `Bearer ${exec}` },
    data: { kinds: ["preview"], max: 10 },
  });
  const job = (await claimed.json()).jobs.find((j: any) => j.proposal_id === assign.id);
  expect(job.kind).toBe("preview");
  const done = await request.post(`/api/v1/jobs/${job.job_id}/complete`, {
    headers: { Authorization: `Bearer ${exec}` },
    data: { lease_id: job.lease_id, status: "succeeded", preview: { before: "assignee: nobody", after: "assignee: bob", state: "v12" } },
  });
  expect(done.status(), await done.text()).toBe(200);
  // The page takes in the dry run when it lands: nobody reloads it.
  await expect(page.getByText(`Computed by executor e2e-${tenant} at`)).toBeVisible();
  await expect(page.getByRole("row", { name: /assignee/ }).first()).toContainText("bob");
  await hydrated(page);
  await expect(page.getByRole("button", { name: "Approve" })).toBeEnabled();
});
