// Passkey-signed decisions with a virtual authenticator (the DevTools
// WebAuthn domain): register on /account, approve with it, and see the
// server refuse what is not a fresh signature of exactly that decision.
import { test, expect, Page, APIRequestContext } from "@playwright/test";
import { addUser, cli, csrfOf, hydrated, mintRun, newTenant, propose, serviceKey, signIn, uniqueKey } from "./helpers";

const change = (n: number) => ({
  tool: "customer.email.change",
  args: { customer_id: `C-${n}`, email: `new${n}@example.com` },
  idempotency_key: uniqueKey(`pk${n}`),
  reason: "The customer asked by phone",
});

async function virtualAuthenticator(page: Page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return cdp;
}

/** Click a passkey button and keep the signed decision it sends, unsent. */
async function signedButNotSent(page: Page, id: string, button: string): Promise<URLSearchParams> {
  await page.goto(`/proposals/${id}`);
  await hydrated(page);
  let body: string | null = null;
  await page.route("**/api/decide", async (route) => {
    body = route.request().postData();
    await route.abort();
  });
  await page.getByRole("button", { name: button }).click();
  await expect.poll(() => body).not.toBeNull();
  await page.unroute("**/api/decide");
  const form = new URLSearchParams(body!);
  expect(form.get("passkey_ceremony")).toBeTruthy();
  expect(form.get("passkey_credential")).toContain("clientDataJSON");
  return form;
}

async function replay(page: Page, form: URLSearchParams, baseURL: string) {
  const res = await page.request.post("/api/decide", {
    headers: { Origin: baseURL, "Content-Type": "application/x-www-form-urlencoded" },
    data: form.toString(),
  });
  expect(res.ok()).toBeFalsy();
  return res.text();
}

async function receiptOf(request: APIRequestContext, tenant: string, proposalId: string) {
  const exec = cli(["key", "create", "executor", "--env", "prod", "--tools", "customer.email.change", "--name", `e2e-${tenant}`, "--policy", "../examples/policy.toml"]);
  const claimed = await request.post("/api/v1/jobs/claim", { headers: { Authorization: `Bearer ${exec}` }, data: { max: 50 } });
  expect(claimed.status(), await claimed.text()).toBe(200);
  const job = (await claimed.json()).jobs.find((j: any) => j.proposal_id === proposalId);
  expect(job, "the approved proposal's job is claimed").toBeTruthy();
  const payload = job.receipt.split(".")[1];
  return JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
}

test("a passkey signs one decision: registered on /account, bound to the proposal and verdict, and said in the receipt", async ({ page, request, baseURL }) => {
  const tenant = newTenant("pk");
  const reviewer = `pk-${tenant}`;
  addUser(reviewer, "reviewer", tenant);
  const key = serviceKey(tenant, "prod");
  const run = await mintRun(request, key, "support/accounts");
  const p1 = await propose(request, run, change(1));
  const p2 = await propose(request, run, change(2));
  const p3 = await propose(request, run, change(3));
  await virtualAuthenticator(page);
  await signIn(page, reviewer);
  await expect(page.getByRole("navigation", { name: "Main" }).first()).toContainText(reviewer);

  // Without a passkey the page says how to add one instead of offering Approve.
  await page.goto(`/proposals/${p1.id}`);
  await hydrated(page);
  await expect(page.locator("#why-not")).toContainText("add one on your account page");
  await expect(page.getByRole("button", { name: "Approve with passkey" })).toBeDisabled();

  // A forged decision with the password session alone is refused.
  const csrf = await csrfOf(page);
  const hash1 = await page.locator("section.decide").getAttribute("data-content-hash");
  const bare = new URLSearchParams({ id: p1.id, verdict: "approve", comment: "", content_hash: hash1!, csrf });
  expect(await replay(page, bare, baseURL!)).toContain("must be signed with your passkey");

  // Register a passkey.
  await page.goto("/account");
  await hydrated(page);
  await page.getByLabel("Name (which device)").fill("virtual key");
  await page.getByRole("button", { name: "Add a passkey" }).click();
  await expect(page.getByRole("status")).toContainText("Added passkey");
  await expect(page.locator("#passkey-list")).toContainText("virtual key");

  // Approve p1 with it: the page moves on to the run's next proposal.
  await page.goto(`/proposals/${p1.id}`);
  await hydrated(page);
  let sent: string | null = null;
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().endsWith("/api/decide")) sent = r.postData();
  });
  await page.getByRole("button", { name: "Approve with passkey" }).click();
  await expect(page).toHaveURL(new RegExp(`/proposals/${p2.id}\\?decided=${p1.id}$`));
  await page.goto(`/proposals/${p1.id}`);
  await expect(page.locator("#review-decisions")).toContainText("passkey-signed");

  // The same signed request again is refused (decided, and its ceremony used up).
  expect(sent).toContain("passkey_credential");
  await replay(page, new URLSearchParams(sent!), baseURL!);

  // A signature made for p2's approval, turned into a rejection: refused.
  const forApprove = await signedButNotSent(page, p2.id, "Approve with passkey");
  forApprove.set("verdict", "reject");
  forApprove.set("comment", "flipped");
  expect(await replay(page, forApprove, baseURL!)).toContain("made for another decision");

  // A signature made for p2, replayed on p3 (with p3's own content hash): refused.
  await page.goto(`/proposals/${p3.id}`);
  const hash3 = await page.locator("section.decide").getAttribute("data-content-hash");
  const forP2 = await signedButNotSent(page, p2.id, "Approve with passkey");
  forP2.set("id", p3.id);
  forP2.set("content_hash", hash3!);
  expect(await replay(page, forP2, baseURL!)).toContain("made for another decision");
  await page.goto(`/proposals/${p3.id}`);
  await expect(page.locator(".markers")).toContainText("pending");

  // The receipt the executor gets says the approval was passkey-signed.
  const claims = await receiptOf(request, tenant, p1.id);
  expect(claims.approvals).toHaveLength(1);
  expect(claims.approvals[0].user).toBe(reviewer);
  expect(claims.approvals[0].passkey).toBe(true);

  // The passkey can be removed; then the page again says how to add one.
  await page.goto("/account");
  await hydrated(page);
  await page.getByRole("button", { name: "Remove passkey virtual key" }).click();
  await expect(page.locator("#passkey-list")).toContainText("You have no passkey yet.");
  await page.goto(`/proposals/${p3.id}`);
  await expect(page.locator("#why-not")).toContainText("add one on your account page");
});
