// Review where reviewers are: an agent's parallel calls together, the next
// pending one after each decision, and the review screen on a phone.
import { test, expect, Page } from "@playwright/test";
import { addUser, cli, hydrated, mintRun, newTenant, propose, serviceKey, signIn, uniqueKey } from "./helpers";

const ticket = (n: number) => ({
  tool: "ticket.close",
  args: { ticket_id: `T-${1000 + n}`, reason: `Duplicate of T-${900 + n}` },
  idempotency_key: uniqueKey(`t${n}`),
  reason: "Cleaning up duplicates",
  preview: { before: "status: open", after: "status: closed" },
});

async function signInAs(page: Page, user: string) {
  await page.context().clearCookies();
  await signIn(page, user);
  await expect(page.getByRole("navigation", { name: "Main" }).first()).toContainText(user);
}

test("parallel calls of one run are grouped, and each decision leads to the next pending one", async ({ page, request }) => {
  const tenant = newTenant("par");
  const reviewer = `pia-${tenant}`;
  addUser(reviewer, "reviewer", tenant);
  const key = serviceKey(tenant, "prod");
  const runA = await mintRun(request, key, "support/send", "alice");
  const runB = await mintRun(request, key, "support/send");
  const a1 = await propose(request, runA, ticket(1));
  const b1 = await propose(request, runB, ticket(2));
  const a2 = await propose(request, runA, ticket(3));
  const a3 = await propose(request, runA, ticket(4));

  await signInAs(page, reviewer);
  await expect(page.getByRole("heading", { name: "Pending approvals" })).toBeVisible();
  const head = page.locator("tr.run-head");
  await expect(head).toHaveCount(1);
  await expect(head).toContainText(/^3 from run .* for alice$/);
  // The run's rows stand together, under their heading, oldest first.
  const links = page.locator("#queue table.queue tbody tr.item a");
  await expect(links).toHaveCount(4);
  const order = await links.evaluateAll((as) => as.map((a) => (a as HTMLAnchorElement).pathname));
  expect(order).toEqual([a1, a2, a3, b1].map((p) => `/proposals/${p.id}`));

  // The review page lists the run's calls; j / k move between them.
  await page.goto(`/proposals/${a1.id}`);
  await hydrated(page);
  const runList = page.getByRole("navigation", { name: /This run: 2 other proposal\(s\), 2 pending/ });
  await expect(runList.getByRole("link")).toHaveCount(3);
  await expect(runList.locator('[aria-current="page"]')).toHaveText("ticket.close");
  await page.keyboard.press("j");
  await expect(page).toHaveURL(new RegExp(`/proposals/${a2.id}$`));
  await hydrated(page);
  await page.keyboard.press("k");
  await expect(page).toHaveURL(new RegExp(`/proposals/${a1.id}$`));
  await hydrated(page);

  // Approving takes the reviewer to the same run's next call, then to the
  // oldest other one; each still decided on its own screen.
  await page.getByRole("button", { name: "Approve" }).click();
  await expect(page).toHaveURL(new RegExp(`/proposals/${a2.id}\\?decided=${a1.id}$`));
  await expect(page.getByRole("status").filter({ hasText: "is recorded. This one is next in your queue." })).toBeVisible();
  // The run list now says the first is decided (its name counts one pending).
  const nowRun = page.getByRole("navigation", { name: /This run: 2 other proposal\(s\), 1 pending/ });
  await expect(nowRun).toContainText("queued");
  await hydrated(page);
  await page.keyboard.press("a");
  await expect(page).toHaveURL(new RegExp(`/proposals/${a3.id}\\?decided=${a2.id}$`));
  await hydrated(page);
  await page.keyboard.press("a");
  await expect(page).toHaveURL(new RegExp(`/proposals/${b1.id}\\?decided=${a3.id}$`));
  await hydrated(page);
  await expect(page.locator("body")).toHaveAttribute("data-live", "open");

  // The last one: nothing else waits, so the page stays, showing the new state.
  await page.keyboard.press("a");
  await expect(page.getByRole("status").filter({ hasText: "Nothing else is waiting for you." })).toBeVisible();
  await expect(page.locator(".markers")).toContainText("queued");
  await expect(page.getByRole("button", { name: "Approve" })).toBeDisabled();
  await expect(page).toHaveURL(new RegExp(`/proposals/${b1.id}`));

  // The page does not fight navigation: while its job runs and succeeds,
  // the reviewer opens another proposal and stays there.
  const exec = cli(["key", "create", "executor", "--env", "prod", "--tools", "ticket.close", "--name", `e2e-${tenant}`, "--policy", "../examples/policy.toml"]);
  const claimed = await request.post("/api/v1/jobs/claim", { headers: { Authorization: `Bearer ${exec}` }, data: { max: 50 } });
  expect(claimed.status(), await claimed.text()).toBe(200);
  const jobs = (await claimed.json()).jobs.filter((j: any) => j.proposal_id === b1.id);
  expect(jobs).toHaveLength(1);
  await Promise.all([
    request.post(`/api/v1/jobs/${jobs[0].job_id}/complete`, {
      headers: { Authorization: `Bearer ${exec}` },
      data: { lease_id: jobs[0].lease_id, status: "succeeded", result: { closed: true } },
    }),
    page.goto(`/proposals/${a1.id}`),
  ]);
  await expect(page.locator(".markers")).toBeVisible();
  await page.waitForTimeout(1500);
  await expect(page).toHaveURL(new RegExp(`/proposals/${a1.id}$`));
});

test.describe("on a phone", () => {
  test.use({ viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true });

  test("queue and review fit 390 px, the notification link opens the review after sign-in, and a tap approves", async ({ page, request }) => {
    const tenant = newTenant("phone");
    const reviewer = `pho-${tenant}`;
    addUser(reviewer, "reviewer", tenant);
    const key = serviceKey(tenant, "prod");
    const send = await mintRun(request, key, "support/send", "alice");
    const ops = await mintRun(request, key, "ops/triage");
    // One proposal of each tool of the example policy that a reviewer decides.
    const made = [
      await propose(request, send, ticket(1)),
      await propose(request, send, {
        tool: "email.send",
        args: {
          to: "customer.with.a.rather.long.address@subdomain.example.com",
          subject: "Your refund for invoice 7731 has been processed and is on its way",
          body: "Hello,\n\nWe refunded the double charge on invoice 7731. ".repeat(6),
        },
        idempotency_key: uniqueKey("mail"),
        reason: "Tell the customer",
        preview: { before: "", after: "To: customer.with.a.rather.long.address@subdomain.example.com\nSubject: Your refund" },
      }),
      await propose(request, send, {
        tool: "refund.create",
        args: { customer_id: "C-424242424242", amount_cents: 2500, currency: "EUR" },
        idempotency_key: uniqueKey("refund"),
        reason: "Double charge on invoice 7731",
      }),
      await propose(request, send, { tool: "ticket.assign", args: { ticket_id: "T-77", assignee: "bob" }, idempotency_key: uniqueKey("assign") }),
      await propose(request, ops, { tool: "alert.ack", args: { alert_id: "AL-1234567890", note: "Known: deploy in progress" }, idempotency_key: uniqueKey("ack") }),
      await propose(request, ops, {
        tool: "service.restart",
        args: { service: "checkout-api-eu-west-1-canary", reason: "Memory leak after deploy 2026-12-05.3; heap at 97%" },
        idempotency_key: uniqueKey("restart"),
      }),
    ];

    // The link a notification carries, opened signed out: sign-in first, then straight to it.
    const first = made[0];
    await page.goto(`/proposals/${first.id}`);
    await expect(page).toHaveURL(/\/login\?next=/);
    await hydrated(page);
    await page.getByLabel("Username", { exact: true }).fill(reviewer);
    await page.getByLabel("Password", { exact: true }).fill("correct horse battery staple");
    await page.getByRole("button", { name: "Sign in" }).tap();
    await expect(page).toHaveURL(new RegExp(`/proposals/${first.id}$`));

    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    for (const p of made) {
      await page.goto(`/proposals/${p.id}`);
      await expect(page.getByRole("heading", { name: "What will change" })).toBeVisible();
      expect(await overflow(), `no sideways scroll on the review of ${p.id}`).toBeLessThanOrEqual(0);
    }

    await page.goto("/");
    await expect(page.getByRole("heading", { name: "Pending approvals" })).toBeVisible();
    expect(await overflow()).toBeLessThanOrEqual(0);
    await page.screenshot({ path: "artifacts/phone-queue.png", fullPage: true });

    // The decision is within reach without scrolling; a tap approves.
    await page.goto(`/proposals/${first.id}`);
    await hydrated(page);
    const approve = page.getByRole("button", { name: "Approve" });
    await expect(approve).toBeInViewport();
    const box = await approve.boundingBox();
    expect(box!.height).toBeGreaterThanOrEqual(44);
    await expect(page.getByRole("heading", { name: "What will change" })).toBeInViewport();
    await page.screenshot({ path: "artifacts/phone-review.png" });
    await approve.tap();
    // The run's next pending call opens (the email), decided on its own screen.
    await expect(page).toHaveURL(new RegExp(`/proposals/${made[1].id}\\?decided=${first.id}$`));
    expect(await overflow()).toBeLessThanOrEqual(0);
    await page.goto(`/proposals/${first.id}`);
    await expect(page.locator(".markers")).toContainText("queued");
  });
});
