from imgcls.v1 import classifier_pb2 as pb


async def test_classify_cat_top1(stub, image_bytes, reference):
    response = await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=image_bytes("cat.jpg"))], request_id="r1"))
    assert response.request_id == "r1"
    assert response.model == "efficientnet-lite0"
    assert response.results[0].labels[0].label == reference["cat.jpg"][0]["label"]
