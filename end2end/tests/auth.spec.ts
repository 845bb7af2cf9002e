// Signing in and out, and the shell around every page.
import { test, expect } from "@playwright/test";
import { PASSWORD, hydrated, signIn } from "./helpers";

test("a reviewer signs in and sees the queue", async ({ page }) => {
  await signIn(page, "alice");
  await expect(page).toHaveURL(/\/$/);
  await expect(page.getByRole("heading", { name: "Pending approvals" })).toBeVisible();
  await expect(page.getByRole("navigation", { name: "Main" })).toContainText("alice");
});

test("a wrong password is refused, and looks like an unknown user", async ({ page }) => {
  await signIn(page, "alice", "not the password at all");
  const alert = page.getByRole("alert").filter({ hasText: "Wrong username or password." });
  await expect(alert).toBeVisible();
  await expect(page).toHaveURL(/\/login/);

  await signIn(page, "nobody-by-this-name", PASSWORD);
  await expect(page.getByRole("alert").filter({ hasText: "Wrong username or password." })).toBeVisible();
});

test("signing out ends the session, and its cookie stops working", async ({ page, context }) => {
  await signIn(page, "bob");
  await expect(page.getByRole("heading", { name: "Pending approvals" })).toBeVisible();
  const before = (await context.cookies()).find((c) => c.name === "cs_session");
  expect(before).toBeTruthy();

  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page).toHaveURL(/\/login/);
  await page.goto("/");
  await expect(page).toHaveURL(/\/login\?next=%2F/);

  // Replaying the old session cookie does not sign anyone in.
  await context.clearCookies();
  await context.addCookies([before!]);
  await page.goto("/");
  await expect(page).toHaveURL(/\/login/);
});

test("signed-out visitors are sent to sign in, and come back after", async ({ page }) => {
  await page.goto("/history");
  await expect(page).toHaveURL(/\/login\?next=%2Fhistory/);
  await hydrated(page);
  await page.getByLabel("Username", { exact: true }).fill("audrey");
  await page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(/\/history$/);
  await expect(page.getByRole("heading", { name: "History" })).toBeVisible();
});

test("the page is hydrated: the password can be shown", async ({ page }) => {
  await page.goto("/login");
  await hydrated(page);
  const pw = page.getByLabel("Password", { exact: true });
  await expect(pw).toHaveAttribute("type", "password");
  await page.getByRole("button", { name: "Show password" }).click();
  await expect(pw).toHaveAttribute("type", "text");
  await expect(page.getByRole("button", { name: "Hide password" })).toHaveAttribute("aria-pressed", "true");
});

test("an unknown page is a 404 with a page that says so", async ({ page }) => {
  const res = await page.goto("/no/such/page");
  expect(res?.status()).toBe(404);
  await expect(page.getByRole("heading", { name: "Not found" })).toBeVisible();
});
