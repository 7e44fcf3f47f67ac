from tests.browser.test_console_signin import *  # noqa

def test_dbg(app, app_ctx, live_server, page):
    tab, journal = page
    admin = make_staff(Role.ADMIN)
    tab.goto(f"{live_server}/console/login")
    tab.fill("#email", admin.email)
    tab.fill("#password", admin.password)
    tab.click("button[type=submit]")
    tab.wait_for_timeout(3000)
    print("URL", tab.url)
    print(tab.content()[:3000])
    print(journal.errors, journal.requests)
    assert 0
