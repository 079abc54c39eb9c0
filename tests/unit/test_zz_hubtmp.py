def test_hub(jupyterhub):
    s = jupyterhub.browser()
    r = s.get(jupyterhub.url + "/hub/tmplogin?course=nope&notebook=a.ipynb")
    print(r.status_code, r.url, r.text[:3000])
    print(jupyterhub.log_text()[-5000:])
