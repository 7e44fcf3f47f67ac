"""The agency app's counter pages (P-18): today's handovers, the check, the photo shown once, match, handover,
return. Payments through localstripe on loopback; the clock moved with time_machine."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from typing import Any

from marketplace.extensions import db
from tests.factories import csrf_from, web_login
from tests.handover.test_service import _at, _booking, _counter


def _post(client: Any, path: str, page: Any, **data: str) -> Any:
    return client.post(path, data={"csrf_token": csrf_from(page.get_data(as_text=True)), **data})


def test_a_full_handover_and_return_in_the_agency_app(app, client, app_ctx, stripe_gateway):  # enforces P-18
    c = _counter(client, stripe_gateway)
    base = f"/agency/bookings/{c.reference}"
    with _at(c.starts_at - timedelta(minutes=20)):
        web_login(client, c.staff, door="agency")
        listed = client.get("/agency/handovers")
        assert listed.status_code == 200 and c.reference in listed.get_data(as_text=True)
        page = client.get(f"{base}/handover")
        html = page.get_data(as_text=True)
        assert page.status_code == 200 and "DXB-778899" in html and 'id="selfie"' not in html
        revealed = _post(client, f"{base}/handover/reveal", page)
        assert revealed.status_code == 200
        src = re.search(r'id="selfie" src="([^"]+)"', revealed.get_data(as_text=True))
        assert src is not None
        photo = client.get(src.group(1))
        assert photo.status_code == 200 and photo.mimetype == "image/jpeg"
        assert "no-store" in photo.headers["Cache-Control"]
        assert client.get(src.group(1)).status_code == 404  # once
        checked = _post(client, f"{base}/handover/check", revealed, outcome="match")
        assert checked.status_code == 302
        page = client.get(f"{base}/handover")
        assert _post(client, f"{base}/handover", page).status_code == 302
        assert _booking(c.reference).status == "in_progress"
        page = client.get(f"{base}/handover")
        refused = _post(client, f"{base}/handover/reveal", page)
        assert refused.status_code == 403 and "handover closed" in refused.get_data(as_text=True)
    with _at(c.ends_at + timedelta(minutes=30)):
        web_login(client, c.staff, door="agency")
        page = client.get(f"{base}/handover")
        assert _post(client, f"{base}/return", page).status_code == 302
        assert "minutes late" in client.get(f"{base}/handover").get_data(as_text=True)
    db.session.expire_all()
    assert _booking(c.reference).status == "returned"


def test_inspections_at_the_counter_in_the_agency_app(app, client, app_ctx, stripe_gateway):  # enforces P-18
    from sqlalchemy import select

    from marketplace.handover.models import Inspection
    from tests.handover.test_inspections import _gps_jpeg

    c = _counter(client, stripe_gateway)
    base = f"/agency/bookings/{c.reference}"
    with _at(c.starts_at - timedelta(minutes=20)):
        web_login(client, c.staff, door="agency")
        page = client.get(f"{base}/handover")
        assert 'id="inspection-mileage"' not in page.get_data(as_text=True)  # not before the match
        refused = _post(client, f"{base}/inspections/pickup", page, mileage_km="100", fuel_eighths="8")
        assert refused.status_code == 409
        revealed = _post(client, f"{base}/handover/reveal", page)
        assert _post(client, f"{base}/handover/check", revealed, outcome="match").status_code == 302
        page = client.get(f"{base}/handover")
        html = page.get_data(as_text=True)
        for element in ("inspection-mileage", "inspection-fuel", "inspection-damage-area", "inspection-damage-severity",
                        "inspection-damage-note", "inspection-note", "inspection-save"):
            assert f'id="{element}"' in html, element
        bad = _post(client, f"{base}/inspections/pickup", page, mileage_km="lots", fuel_eighths="8")
        assert bad.status_code == 422
        saved = _post(client, f"{base}/inspections/pickup", page, mileage_km="23100", fuel_eighths="6",
                      damage_area="rear", damage_severity="dent", damage_note="bumper", note="")
        assert saved.status_code == 302
        page = client.get(f"{base}/handover")
        _post(client, f"{base}/inspections/pickup", page, mileage_km="23100", fuel_eighths="6",
              damage_area="roof", damage_severity="scratch")
        page = client.get(f"{base}/handover")
        html = page.get_data(as_text=True)
        assert "23100 km" in html and "rear: dent" in html and "roof: scratch" in html
        for element in ("inspection-photo", "inspection-photo-upload", "inspection-ack-name", "inspection-ack"):
            assert f'id="{element}"' in html, element
        token = csrf_from(html)
        uploaded = client.post(f"{base}/inspections/pickup/photos", content_type="multipart/form-data",
                               data={"csrf_token": token, "image": (io.BytesIO(_gps_jpeg()), "car.jpg", "image/jpeg")})
        assert uploaded.status_code == 302, uploaded.get_data(as_text=True)[:500]
        page = client.get(f"{base}/handover")
        thumb = re.search(r'class="inspection-thumb" src="([^"]+)"', page.get_data(as_text=True))
        assert thumb is not None
        served = client.get(thumb.group(1))
        assert served.status_code == 200 and "no-store" in served.headers["Cache-Control"]
        assert _post(client, f"{base}/inspections/pickup/acknowledge", page, name="Noura").status_code == 302
        page = client.get(f"{base}/handover")
        html = page.get_data(as_text=True)
        assert "acknowledged by" in html and 'id="inspection-save"' not in html  # frozen
        again = _post(client, f"{base}/inspections/pickup", page, mileage_km="1", fuel_eighths="1")
        assert again.status_code == 409
    db.session.expire_all()
    row = db.session.execute(select(Inspection)).scalar_one()
    assert (row.mileage_km, row.fuel_eighths, row.acknowledged_name) == (23100, 6, "Noura")
    assert [d["area"] for d in row.damage] == ["rear", "roof"]
